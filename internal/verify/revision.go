package verify

import (
	"fmt"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// revisioned applies to installations whose control plane is a revision.
func revisioned(t *target) bool { return t.has(partInstall) && t.names.Revision != revision.Default }

// checkRevision (R1): the control plane is the revision's alone: istiod
// knows its revision, no object of the default control plane is left, every
// object Istio labels with a revision carries this one and the step of an
// upgrade that applies it, and the gateways fetch their configuration and
// certificates from the revision's istiod.
func checkRevision(t *target) []Problem {
	var p problems
	rev := t.names.Revision
	if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
		expectEnv(&p, d, discovery, "REVISION", rev)
	}
	def := revision.NamesOf(revision.Default)
	for _, k := range []struct{ kind, name string }{
		{"Deployment", def.Istiod}, {"Service", def.Istiod}, {"ConfigMap", def.Mesh}, {"ConfigMap", def.Injector},
		{"MutatingWebhookConfiguration", def.InjectorWebhook}, {"ValidatingWebhookConfiguration", def.Validator},
	} {
		n := ns
		if strings.HasSuffix(k.kind, "WebhookConfiguration") {
			n = ""
		}
		if o := t.get(k.kind, n, k.name); o != nil {
			p.because(object.Key(o), "", "an object of the default control plane in an installation of revision "+rev)
		}
	}
	for _, o := range t.own {
		r, ok := o.GetLabels()[revision.Label]
		if ok && r != rev {
			p.wrong(object.Key(o), "metadata.labels["+revision.Label+"]", r, fmt.Sprintf("%q", rev))
		}
		// What an upgrade applies at each step, for kubectl apply -l.
		if step := revision.StepOf(o); ok && o.GetKind() != "CustomResourceDefinition" {
			expectLabel(&p, o, revision.StepLabel, step)
		}
	}
	for _, o := range t.own {
		if o.GetKind() != "Deployment" || o.GetNamespace() != ns || revision.IsIstiod(o) {
			continue
		}
		tpl := podTemplate(&p, o)
		if tpl == nil || container(&tpl.Spec, inject.ProxyContainer) == nil {
			continue
		}
		expectEnv(&p, o, inject.ProxyContainer, "CA_ADDR", t.names.Istiod+"."+ns+".svc:15012")
		i := slices.IndexFunc(tpl.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "config-volume" })
		if i < 0 || tpl.Spec.Volumes[i].ConfigMap == nil || tpl.Spec.Volumes[i].ConfigMap.Name != t.names.Mesh {
			var found any
			if i >= 0 {
				found = tpl.Spec.Volumes[i]
			}
			p.wrong(object.Key(o), "volumes[config-volume].configMap.name", found, fmt.Sprintf("%q (the mesh config of revision %s)", t.names.Mesh, rev))
		}
	}
	return p
}

// injectionCase is a namespace and a pod, and the webhook configuration
// that must inject the pod ("" for none).
type injectionCase struct {
	what          string
	ns, pod       labels.Set
	configuration string
}

// checkRevisionInjection (R2): each way a pod asks for a sidecar reaches one
// webhook, of the revision's injector or of the default tag, and that webhook
// calls the revision's istiod: Kubeflow's istio-injection=enabled profiles
// follow the tag without relabelling.
func checkRevisionInjection(t *target) []Problem {
	var p problems
	rev := t.names.Revision
	tag := revision.TagWebhook(revision.Default)
	if o := t.require(&p, "MutatingWebhookConfiguration", "", tag); o != nil {
		expectLabel(&p, o, revision.TagLabel, revision.Default)
		expectLabel(&p, o, revision.Label, rev)
	}
	type hook struct {
		configuration string
		w             admissionv1.MutatingWebhook
	}
	var hooks []hook
	for _, o := range t.objs {
		if o.GetKind() != "MutatingWebhookConfiguration" {
			continue
		}
		var cfg admissionv1.MutatingWebhookConfiguration
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cfg); err != nil {
			p.because(object.Key(o), "", err.Error())
			continue
		}
		for _, w := range cfg.Webhooks {
			hooks = append(hooks, hook{o.GetName(), w})
		}
	}
	cases := []injectionCase{
		{"a namespace labelled istio.io/rev=" + rev, labels.Set{revision.Label: rev}, nil, t.names.InjectorWebhook},
		{"a pod labelled istio.io/rev=" + rev, nil, labels.Set{revision.Label: rev}, t.names.InjectorWebhook},
		{"a namespace labelled istio-injection=enabled", labels.Set{inject.InjectionLabel: "enabled"}, nil, tag},
		{"a namespace labelled istio.io/rev=default", labels.Set{revision.Label: revision.Default}, nil, tag},
		{"a pod labelled sidecar.istio.io/inject=true", nil, labels.Set{"sidecar.istio.io/inject": "true"}, tag},
		{"a namespace labelled istio-injection=disabled", labels.Set{inject.InjectionLabel: "disabled"}, nil, ""},
		{"an unlabelled namespace", nil, nil, ""},
	}
	for _, c := range cases {
		var got []hook
		for _, h := range hooks {
			if selects(h.w.NamespaceSelector, c.ns) && selects(h.w.ObjectSelector, c.pod) {
				got = append(got, h)
			}
		}
		var names []string
		for _, h := range got {
			names = append(names, h.configuration+"/"+h.w.Name)
		}
		switch {
		case c.configuration == "" && len(got) > 0:
			p.because("MutatingWebhookConfiguration", "webhooks", fmt.Sprintf("the pods of %s are injected by %v, want by none", c.what, names))
		case c.configuration == "":
		case len(got) != 1 || got[0].configuration != c.configuration:
			p.because("MutatingWebhookConfiguration", "webhooks", fmt.Sprintf("the pods of %s are injected by %v, want by one webhook of %s", c.what, names, c.configuration))
		case !callsService(got[0].w.ClientConfig, t.names.Istiod, "/inject"):
			p.because(object.KeyOf("MutatingWebhookConfiguration", "", c.configuration), "webhooks["+got[0].w.Name+"].clientConfig",
				fmt.Sprintf("does not call Service %s/%s at /inject", ns, t.names.Istiod))
		}
	}
	return p
}

// callsService reports whether a webhook calls path of a Service of
// istio-system.
func callsService(c admissionv1.WebhookClientConfig, name, path string) bool {
	return c.Service != nil && c.Service.Namespace == ns && c.Service.Name == name && c.Service.Path != nil && *c.Service.Path == path
}

// checkWebhookServices (WEBHOOKS): every webhook configuration of the
// installation reaches istiod's pods: the Service it calls selects them, its
// port leads to the container port istiod serves webhooks on, and the
// configuration carries the revision of that istiod, which writes its CA
// bundle (and its validators' failure policy) only on configurations of its
// own revision.
func checkWebhookServices(t *target) []Problem {
	var p problems
	d := t.require(&p, "Deployment", ns, t.names.Istiod)
	if d == nil {
		return p
	}
	tpl := podTemplate(&p, d)
	if tpl == nil {
		return p
	}
	for _, o := range t.objs {
		kind := o.GetKind()
		if kind != "MutatingWebhookConfiguration" && kind != "ValidatingWebhookConfiguration" {
			continue
		}
		for _, ws := range object.WebhookServices(o) {
			if ws.Namespace != ns {
				continue
			}
			where := fmt.Sprintf("webhooks[%s].clientConfig.service", ws.Webhook)
			if s := t.get("Service", ns, ws.Name); s == nil {
				p.because(object.Key(o), where, "calls Service "+ns+"/"+ws.Name+", which the installation lacks")
			} else if why := reaches(s, ws.Port, tpl); why != "" {
				p.because(object.Key(o), where, why)
			}
		}
		expectLabel(&p, o, revision.Label, t.names.Revision)
	}
	return p
}

// reaches says why port of Service s does not lead to a pod of tpl that
// listens on it, or "".
func reaches(s *unstructured.Unstructured, port int64, tpl *corev1.PodTemplateSpec) string {
	var svc corev1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(s.Object, &svc); err != nil {
		return err.Error()
	}
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(tpl.Labels)) {
		return fmt.Sprintf("%s selects %v, not the pods of istiod (%v)", object.Key(s), svc.Spec.Selector, tpl.Labels)
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return int64(sp.Port) == port })
	if i < 0 {
		return fmt.Sprintf("%s has no port %d", object.Key(s), port)
	}
	target := svc.Spec.Ports[i].TargetPort
	c := container(&tpl.Spec, discovery)
	if c == nil {
		return "istiod has no container " + discovery
	}
	if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
		return (target.IntValue() != 0 && int(cp.ContainerPort) == target.IntValue()) || (target.IntValue() == 0 && cp.Name == target.String()) ||
			(target.IntValue() == 0 && target.String() == "" && int64(cp.ContainerPort) == port)
	}) {
		return fmt.Sprintf("%s port %d leads to %s, which istiod's container does not listen on", object.Key(s), port, target.String())
	}
	return ""
}
