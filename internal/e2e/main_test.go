package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeflow/kfistio/internal/testcluster"
)

// cluster is the control plane every test of this package shares, with the
// real istiod running whenever an installation holds it.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, []testcluster.Node{{Name: "node-a"}, {Name: "node-b"}}, func(c *testcluster.Cluster) error {
		cluster = c
		if err := c.RunIstiod(); err != nil {
			return err
		}
		return kubeflowNeighbours(context.Background(), c)
	}))
}

// The Kubeflow parts that the tree's configuration names, as Kubeflow's
// other directories deploy them.
const (
	dexHost      = "dex.auth.svc.cluster.local:5556"
	dexIssuer    = "http://dex.auth.svc.cluster.local:5556/dex"
	jwksProxy    = "cluster-jwks-proxy.istio-system.svc.cluster.local:80"
	oauth2ProxyN = "oauth2-proxy"
	defaulting   = "e2e-defaulting"
)

// kubeflowNeighbours deploys what the Kubeflow example has next to Istio and
// the tree's configuration relies on:
//   - the Service of oauth2-proxy, the external authorization provider of the
//     mesh config (istiod configures ext_authz only for a provider whose
//     Service exists);
//   - Dex's OpenID discovery and keys, which istiod fetches for the dex-jwt
//     RequestAuthentication, answered through the cluster's HTTP proxy for
//     istiod with a key of this test;
//   - the service-account JWKS proxy of m2m-auth, answering with the API
//     server's own keys;
//   - a namespace where pods are created without injection, to let the API
//     server default the pods of verify's simulation.
func kubeflowNeighbours(ctx context.Context, c *testcluster.Cluster) error {
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	for name, labels := range map[string]map[string]string{
		"auth": nil, oauth2ProxyN: nil,
		defaulting: {"istio-injection": "disabled", "pod-security.kubernetes.io/enforce": "privileged"},
	} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := kc.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Namespace/%s: %w", name, err)
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: oauth2ProxyN, Namespace: oauth2ProxyN},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app.kubernetes.io/name": oauth2ProxyN},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if _, err := kc.CoreV1().Services(oauth2ProxyN).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service/oauth2-proxy/oauth2-proxy: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	dex := http.NewServeMux()
	dex.Handle("/dex/.well-known/openid-configuration", jsonHandler(map[string]any{
		"issuer": dexIssuer, "jwks_uri": dexIssuer + "/keys",
	}))
	dex.Handle("/dex/keys", jsonHandler(map[string]any{"keys": []any{jwk(&key.PublicKey, "e2e-dex")}}))
	c.ServeInCluster(dexHost, dex)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	keys, err := kc.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("read the API server's JWKS: %w", err)
	}
	c.ServeInCluster(jwksProxy, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(keys)
	}))
	return nil
}

// jwk is the JSON Web Key of an RSA public key.
func jwk(k *rsa.PublicKey, kid string) map[string]any {
	enc := base64.RawURLEncoding.EncodeToString
	return map[string]any{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
		"n": enc(k.N.Bytes()), "e": enc(big.NewInt(int64(k.E)).Bytes())}
}

func jsonHandler(v any) http.Handler {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
}
