package verify

import (
	"crypto/sha256"
	"encoding/json"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/schema"
)

// schemas caches validators by their CRDs and verdicts by object, as the same
// objects appear in many builds of one tree.
type schemas struct {
	mu         sync.Mutex
	validators map[[32]byte]*schema.Validator
	verdicts   map[[32]byte][]string
}

func digest(parts ...any) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		b, _ := json.Marshal(p)
		h.Write(b)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

func (s *schemas) validator(crds []*unstructured.Unstructured) ([32]byte, *schema.Validator, error) {
	var defs []any
	for _, o := range crds {
		if o.GetKind() == "CustomResourceDefinition" {
			defs = append(defs, o.Object)
		}
	}
	d := digest(defs)
	s.mu.Lock()
	v, ok := s.validators[d]
	s.mu.Unlock()
	if ok {
		return d, v, nil
	}
	v, err := schema.New(crds)
	if err != nil {
		return d, nil, err
	}
	s.mu.Lock()
	s.validators[d] = v
	s.mu.Unlock()
	return d, v, nil
}

func (s *schemas) validate(vd [32]byte, v *schema.Validator, o *unstructured.Unstructured) []string {
	d := digest(vd, o.Object)
	s.mu.Lock()
	res, ok := s.verdicts[d]
	s.mu.Unlock()
	if ok {
		return res
	}
	res = v.Validate(o)
	s.mu.Lock()
	s.verdicts[d] = res
	s.mu.Unlock()
	return res
}

// checkSchema validates every object: built-in kinds against the Kubernetes
// schema, Istio kinds against the CRDs of the build, or of istio-crds/base
// when the build has none.
func checkSchema(t *target) []Problem {
	var p problems
	crds := t.objs
	if !t.has(partCRDs) {
		var err error
		if crds, err = t.env.objects(dirSpec(build.CRDsDir)); err != nil {
			p.because("", "", "cannot build "+build.CRDsDir+" for the CRD schemas: "+err.Error())
			return p
		}
	}
	vd, v, err := t.env.schemas.validator(crds)
	if err != nil {
		p.because("", "", err.Error())
		return p
	}
	for _, o := range t.objs {
		for _, msg := range t.env.schemas.validate(vd, v, o) {
			p.because(object.Key(o), "", msg)
		}
	}
	return p
}
