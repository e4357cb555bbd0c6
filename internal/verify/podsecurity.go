package verify

import (
	"fmt"

	"k8s.io/pod-security-admission/api"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/podsecurity"
)

// namespaceLevels returns the level each Namespace of the build enforces.
func (t *target) namespaceLevels(p *problems) map[string]api.Level {
	levels := map[string]api.Level{}
	for _, o := range t.objs {
		if o.GetKind() != "Namespace" {
			continue
		}
		l, err := podsecurity.NamespaceLevel(o.GetLabels())
		if err != nil {
			p.because(object.Key(o), "metadata.labels", err.Error())
			continue
		}
		levels[o.GetName()] = l
	}
	return levels
}

// checkPodSecurity evaluates every pod template at the level its namespace
// enforces in the build: namespaces the build does not label enforce nothing
// (privileged), as on a cluster.
func checkPodSecurity(t *target) []Problem {
	var p problems
	levels := t.namespaceLevels(&p)
	for _, o := range t.objs {
		if !object.HasPodTemplate(o) {
			continue
		}
		level, ok := levels[o.GetNamespace()]
		if !ok || level == api.LevelPrivileged {
			continue
		}
		tpl := podTemplate(&p, o)
		if tpl == nil {
			continue
		}
		allowed, reason, err := podsecurity.Evaluate(level, tpl)
		if err != nil {
			p.because(object.Key(o), "", err.Error())
			continue
		}
		if !allowed {
			p.because(object.Key(o), "pod template", fmt.Sprintf("violates the %s level of namespace %s: %s", level, o.GetNamespace(), reason))
		}
	}
	return p
}

// checkInjection injects the sample workloads and checks what the injector
// made of them: a proxy of the control plane's release, and a pod that the
// namespaces of the tree admit.
func checkInjection(t *target) []Problem {
	var p problems
	levels := t.namespaceLevels(&p)
	var controlPlane string
	if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
		if spec, err := object.PodSpec(d); err == nil && spec != nil {
			if c := container(spec, discovery); c != nil {
				_, controlPlane = splitImage(c.Image)
			}
		}
	}
	t.forInjections(&p, func(key string, r injection) {
		proxy := proxyContainer(&r.pod.Spec)
		if proxy == nil {
			p.because(key, "", "the injector added no "+inject.ProxyContainer)
			return
		}
		if hub, tag := splitImage(proxy.Image); tag != controlPlane || hub != istioReleaseHub {
			p.wrong(key, inject.ProxyContainer+".image", proxy.Image, fmt.Sprintf("%s/proxyv2:%s, the control plane's release", istioReleaseHub, controlPlane))
		}
		restricted, reason, err := podsecurity.Evaluate(api.LevelRestricted, r.pod)
		if err != nil {
			p.because(key, "", err.Error())
			return
		}
		need := api.LevelRestricted
		if !restricted {
			if need, err = podsecurity.Strictest(r.pod); err != nil {
				p.because(key, "", err.Error())
				return
			}
		}
		if t.overlay.CNI && !restricted {
			p.because(key, "", "no longer passes the restricted level after injection: "+reason)
		}
		nsName := r.sample.GetNamespace()
		level, labelled := levels[nsName]
		switch {
		case labelled && !podsecurity.Allows(level, need):
			p.because(key, "", fmt.Sprintf("needs the %s level but namespace %s enforces %s", need, nsName, level))
		case !labelled && !t.overlay.CNI:
			p.because(key, "", fmt.Sprintf("needs the %s level but the %s overlay does not label namespace %s", need, t.overlay.Name, nsName))
		}
	})
	return p
}
