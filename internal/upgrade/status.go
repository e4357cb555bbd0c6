package upgrade

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
)

// Revision is a control plane of the cluster and the proxies it serves.
type Revision struct {
	install.ControlPlane
	// Status is kstatus's status of its istiod Deployment, Message why.
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
	// Workloads are those whose pods run its proxies (sidecars and
	// gateways), Pods how many pods in all.
	Workloads []doctor.StaleWorkload `json:"workloads"`
	Pods      int                    `json:"pods"`
}

// Revisions reports each control plane of the cluster, its release, whether
// it is the default, and the pods whose proxies it serves (those labelled
// with its revision, as injection and the gateway charts label them).
func Revisions(ctx context.Context, in *install.Installer) ([]Revision, error) {
	cps, err := in.ControlPlanes(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := in.Client.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := make([]Revision, len(cps))
	for i, cp := range cps {
		r := Revision{ControlPlane: cp}
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cp.Deployment)
		if err != nil {
			return nil, fmt.Errorf("status of Deployment/%s/%s: %w", cp.Deployment.Namespace, cp.Deployment.Name, err)
		}
		d := &unstructured.Unstructured{Object: u}
		d.SetAPIVersion("apps/v1")
		d.SetKind("Deployment")
		st, err := status.Compute(d)
		if err != nil {
			return nil, fmt.Errorf("status of Deployment/%s/%s: %w", cp.Deployment.Namespace, cp.Deployment.Name, err)
		}
		r.Status, r.Message = string(st.Status), st.Message
		if r.Workloads, err = doctor.ProxiesOf(ctx, in.Client, pods.Items, cp.Revision); err != nil {
			return nil, err
		}
		for _, w := range r.Workloads {
			r.Pods += len(w.Pods)
		}
		out[i] = r
	}
	return out, nil
}
