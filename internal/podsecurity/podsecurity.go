// Package podsecurity judges pods against the Pod Security Standards with the
// evaluator of the Pod Security admission controller
// (k8s.io/pod-security-admission), at the level a namespace enforces.
package podsecurity

import (
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// EnforceLabel is the namespace label that sets the enforced level.
const EnforceLabel = api.EnforceLevelLabel

// Levels from the least to the most strict.
var Levels = []api.Level{api.LevelPrivileged, api.LevelBaseline, api.LevelRestricted}

var (
	once      sync.Once
	evaluator policy.Evaluator
	evalErr   error
)

func get() (policy.Evaluator, error) {
	once.Do(func() { evaluator, evalErr = policy.NewEvaluator(policy.DefaultChecks(), nil) })
	return evaluator, evalErr
}

// NamespaceLevel is the level a namespace with labels enforces: privileged
// when the label is absent, as the admission controller's default is.
func NamespaceLevel(labels map[string]string) (api.Level, error) {
	v, ok := labels[EnforceLabel]
	if !ok {
		return api.LevelPrivileged, nil
	}
	l, err := api.ParseLevel(v)
	if err != nil {
		return "", fmt.Errorf("label %s=%q: %w", EnforceLabel, v, err)
	}
	return l, nil
}

// NamespaceLevels returns the level each Namespace among objs enforces;
// namespaces with an unknown level are left out.
func NamespaceLevels(objs []*unstructured.Unstructured) map[string]api.Level {
	levels := map[string]api.Level{}
	for _, o := range objs {
		if o.GetKind() != "Namespace" {
			continue
		}
		if l, err := NamespaceLevel(o.GetLabels()); err == nil {
			levels[o.GetName()] = l
		}
	}
	return levels
}

// Evaluate judges the pod tpl at level (latest version of the standards) and
// returns the evaluator's reasons, with the offending containers and fields,
// when it is not allowed.
func Evaluate(level api.Level, tpl *corev1.PodTemplateSpec) (allowed bool, reason string, err error) {
	ev, err := get()
	if err != nil {
		return false, "", err
	}
	results := ev.EvaluatePod(api.LevelVersion{Level: level, Version: api.LatestVersion()}, &tpl.ObjectMeta, &tpl.Spec)
	agg := policy.AggregateCheckResults(results)
	if agg.Allowed {
		return true, "", nil
	}
	return false, agg.ForbiddenDetail(), nil
}

// Strictest returns the strictest level that tpl passes.
func Strictest(tpl *corev1.PodTemplateSpec) (api.Level, error) {
	best := api.LevelPrivileged
	for _, l := range Levels[1:] {
		ok, _, err := Evaluate(l, tpl)
		if err != nil {
			return "", err
		}
		if !ok {
			break
		}
		best = l
	}
	return best, nil
}

// Allows reports whether level a admits every pod that level b admits.
func Allows(a, b api.Level) bool { return rank(a) <= rank(b) }

func rank(l api.Level) int {
	for i, x := range Levels {
		if x == l {
			return i
		}
	}
	return len(Levels)
}
