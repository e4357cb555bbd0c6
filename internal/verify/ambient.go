package verify

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

const ztunnel = "ztunnel"

// checkZtunnel checks the node proxy of ambient mode and the CNI node
// agent's ambient setup.
func checkZtunnel(t *target) []Problem {
	var p problems
	if ds := t.require(&p, "DaemonSet", cniNamespace, ztunnel); ds != nil {
		expect(&p, ds, "spec.template.spec.priorityClassName", "system-node-critical")
		if tpl := podTemplate(&p, ds); tpl != nil {
			if c := container(&tpl.Spec, "istio-proxy"); c == nil || c.Image != istioReleaseHub+"/ztunnel:"+upstream.Release {
				var got any
				if c != nil {
					got = c.Image
				}
				p.wrong(object.Key(ds), "containers[istio-proxy].image", got, istioReleaseHub+"/ztunnel:"+upstream.Release)
			}
		}
	}
	t.require(&p, "ServiceAccount", cniNamespace, ztunnel)
	// istiod signs certificates for ztunnel's ServiceAccount where ztunnel runs.
	if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
		expectEnv(&p, d, discovery, "CA_TRUSTED_NODE_ACCOUNTS", cniNamespace+"/"+ztunnel)
	}
	t.require(&p, "ClusterRole", "", "istio-cni-ambient")
	t.require(&p, "ClusterRoleBinding", "", "istio-cni-ambient")
	if cm := t.require(&p, "ConfigMap", cniNamespace, "istio-cni-config"); cm != nil {
		expect(&p, cm, "data.AMBIENT_ENABLED", "true")
	}
	if ds := t.require(&p, "DaemonSet", cniNamespace, cniNode); ds != nil {
		if tpl := podTemplate(&p, ds); tpl != nil {
			c := container(&tpl.Spec, "install-cni")
			if c == nil || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/var/run/ztunnel" }) {
				p.because(object.Key(ds), "containers[install-cni].volumeMounts", "no mount of /var/run/ztunnel, ztunnel's socket")
			}
		}
	}
	return p
}

// checkAmbientNamespaces checks that the samples that run in namespaces the
// build puts in ambient mode are left to ztunnel: no webhook injects them.
func checkAmbientNamespaces(t *target) []Problem {
	var p problems
	results, err := t.injections()
	if err != nil {
		p.because("", "injection", err.Error())
		return p
	}
	seen := 0
	for _, r := range results {
		nsObj := t.get("Namespace", "", r.sample.GetNamespace())
		if nsObj == nil || nsObj.GetLabels()[dataplaneLabel] != "ambient" {
			continue
		}
		seen++
		if r.injected {
			p.because("injected "+object.Key(r.sample), "", "a sidecar is injected into a pod of an ambient namespace")
		}
	}
	if seen == 0 {
		p.because("", "", "the build labels no namespace of the sample workloads "+dataplaneLabel+"=ambient")
	}
	return p
}

// egressHosts are the namespaces every sidecar must still reach.
var egressHosts = []string{"./*", "*/*.istio-system.svc.cluster.local", "kubeflow/*", "knative-serving/*"}

// checkSidecarEgress checks the mesh-wide Sidecar and its exceptions.
func checkSidecarEgress(t *target) []Problem {
	var p problems
	if s := t.require(&p, "Sidecar", ns, "default"); s != nil {
		hosts := sidecarHosts(s)
		for _, h := range egressHosts {
			if !slices.Contains(hosts, h) {
				p.wrong(object.Key(s), "spec.egress[].hosts", hosts, "to include "+h)
			}
		}
		if slices.Contains(hosts, "*/*") {
			p.because(object.Key(s), "spec.egress[].hosts", "*/* limits nothing")
		}
	}
	for _, name := range []string{"notebook-controller", "ml-pipeline-ui"} {
		if s := t.require(&p, "Sidecar", "kubeflow", name); s != nil {
			if hosts := sidecarHosts(s); !slices.Contains(hosts, "*/*") {
				p.wrong(object.Key(s), "spec.egress[].hosts", hosts, `"*/*": it reaches every profile namespace`)
			}
		}
	}
	return p
}

func sidecarHosts(s *unstructured.Unstructured) []string {
	var hosts []string
	egress, _, _ := unstructured.NestedSlice(s.Object, "spec", "egress")
	for _, e := range egress {
		h, _, _ := unstructured.NestedStringSlice(e.(map[string]any), "hosts")
		hosts = append(hosts, h...)
	}
	return hosts
}
