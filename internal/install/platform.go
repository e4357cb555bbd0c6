package install

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeflow/kfistio/internal/kube"
)

// Platform is what kfistio can tell about where a cluster runs.
type Platform struct {
	GKE bool
	// Reason says what the detection saw.
	Reason string
}

// gkeNodeLabel is on every node of a GKE node pool.
const gkeNodeLabel = "cloud.google.com/gke-nodepool"

// DetectPlatform tells GKE from other clusters by the API server's version
// (GKE's carry "-gke"), the node-pool label of GKE nodes, or gce:// provider
// IDs.
func DetectPlatform(ctx context.Context, c *kube.Client) (Platform, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 100})
	if err != nil {
		return Platform{}, fmt.Errorf("list nodes to detect the platform: %w", err)
	}
	return PlatformOf(c.Version, nodes.Items), nil
}

// PlatformOf tells GKE from the API server version and the nodes.
func PlatformOf(serverVersion string, nodes []corev1.Node) Platform {
	if strings.Contains(serverVersion, "-gke") {
		return Platform{GKE: true, Reason: "the API server version " + serverVersion + " is a GKE version"}
	}
	for _, n := range nodes {
		if pool, ok := n.Labels[gkeNodeLabel]; ok {
			return Platform{GKE: true, Reason: fmt.Sprintf("node %s has the GKE label %s=%s", n.Name, gkeNodeLabel, pool)}
		}
		if strings.HasPrefix(n.Spec.ProviderID, "gce://") {
			return Platform{GKE: true, Reason: fmt.Sprintf("node %s runs on Google Compute Engine (%s)", n.Name, n.Spec.ProviderID)}
		}
	}
	return Platform{Reason: fmt.Sprintf("API server %s, %d nodes without GKE labels or gce:// provider IDs", serverVersion, len(nodes))}
}
