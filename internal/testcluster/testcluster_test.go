package testcluster

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// start starts a cluster for the test, stopped when the test ends.
func start(t *testing.T) (*Cluster, context.Context) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c, err := Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c, ctx
}

// The control plane runs workloads on fake nodes: a Deployment becomes
// Available and a DaemonSet rolls out on every node.
func TestClusterRunsWorkloads(t *testing.T) {
	c, ctx := start(t)
	if err := c.AddNodes(ctx, Node{Name: "node-a"}, Node{Name: "node-b"}); err != nil {
		t.Fatal(err)
	}
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	tpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.example.com/web:1"}}},
	}
	if _, err := kc.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tpl},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.AppsV1().DaemonSets("default").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec:       appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tpl},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		d, err1 := kc.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{})
		ds, err2 := kc.AppsV1().DaemonSets("default").Get(ctx, "agent", metav1.GetOptions{})
		if err1 == nil && err2 == nil && d.Status.AvailableReplicas == 1 && ds.Status.NumberReady == 2 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workloads not ready: deployment %+v, daemonset %+v\n%s", d.Status, ds.Status, c.Logs())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
