// Package kube connects to a cluster from a kubeconfig and an optional
// context, with errors that say what to do, and maps objects to their API
// resources.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubeflow/kfistio/internal/object"
)

// Options say which cluster to talk to.
type Options struct {
	// Kubeconfig is the kubeconfig file; empty means $KUBECONFIG, then
	// ~/.kube/config, as kubectl reads them.
	Kubeconfig string
	// Context is the kubeconfig context; empty means the current one.
	Context string
	// WrapTransport, if set, wraps every request (to count them, say).
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// Warnings receives the API server's warnings, once each; nil drops them.
	Warnings io.Writer
	// Concurrency is how many requests the client's users keep in flight;
	// 0 means DefaultConcurrency. The client-side rate limit is sized for it.
	Concurrency int
}

// DefaultConcurrency is how many requests kfistio keeps in flight.
const DefaultConcurrency = 8

// Client talks to one cluster.
type Client struct {
	Config  *rest.Config
	Dynamic dynamic.Interface
	Kube    kubernetes.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	mu      sync.Mutex
	missed  map[schema.GroupVersionKind]bool
	// Context and Host say which cluster this is, for messages.
	Context, Host string
	// Version is the API server's version, as it reports it.
	Version string
	// Concurrency is how many requests to keep in flight (Options.Concurrency).
	Concurrency int
}

// Connect loads the configuration and checks that the API server answers.
func Connect(ctx context.Context, o Options) (*Client, error) {
	cfg, contextName, err := load(o)
	if err != nil {
		return nil, err
	}
	if o.WrapTransport != nil {
		cfg.Wrap(o.WrapTransport)
	}
	// Outside WrapTransport, which sees every attempt.
	cfg.Wrap(retrying)
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	// Enough that the limit does not queue what is in flight: the server's
	// priority and fairness is what throttles, with 429 and Retry-After.
	cfg.QPS, cfg.Burst = float32(25*o.Concurrency), 50*o.Concurrency
	cfg.WarningHandler = rest.NoWarnings{}
	if o.Warnings != nil {
		cfg.WarningHandler = rest.NewWarningWriter(o.Warnings, rest.WarningWriterOptions{Deduplicate: true})
	}
	// Built-in kinds come back in protobuf, as Kubernetes' own controllers
	// read them: large lists (every pod of the cluster) decode in a fraction
	// of JSON's time and memory. What is sent stays JSON.
	typed := rest.CopyConfig(cfg)
	typed.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	typed.ContentType = runtime.ContentTypeJSON
	kc, err := kubernetes.NewForConfig(typed)
	if err != nil {
		return nil, err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{Config: cfg, Dynamic: dc, Kube: kc, Context: contextName, Host: cfg.Host, Concurrency: o.Concurrency,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kc.Discovery())),
		missed: map[schema.GroupVersionKind]bool{}}
	v, err := serverVersion(ctx, kc.Discovery())
	if err != nil {
		return nil, fmt.Errorf("cannot reach the Kubernetes API server at %s (context %q): %w; check --kubeconfig and --context, and that the cluster is up", c.Host, c.Context, err)
	}
	c.Version = v
	return c, nil
}

func serverVersion(ctx context.Context, d discovery.DiscoveryInterface) (string, error) {
	type result struct {
		v   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		info, err := d.ServerVersion()
		if err != nil {
			ch <- result{err: err}
			return
		}
		ch <- result{v: info.GitVersion}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func load(o Options) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.Kubeconfig != "" {
		if _, err := os.Stat(o.Kubeconfig); err != nil {
			return nil, "", fmt.Errorf("kubeconfig %s: %w", o.Kubeconfig, err)
		}
		rules.ExplicitPath = o.Kubeconfig
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context})
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, "", fmt.Errorf("read kubeconfig: %w", err)
	}
	if len(raw.Contexts) == 0 {
		return nil, "", errors.New("no Kubernetes configuration found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config")
	}
	name := o.Context
	if name == "" {
		name = raw.CurrentContext
	}
	if _, ok := raw.Contexts[name]; !ok {
		var names []string
		for n := range raw.Contexts {
			names = append(names, n)
		}
		sort.Strings(names)
		if name == "" {
			return nil, "", fmt.Errorf("the kubeconfig has no current context: pass --context (one of %s)", strings.Join(names, ", "))
		}
		return nil, "", fmt.Errorf("context %q is not in the kubeconfig: use one of %s", name, strings.Join(names, ", "))
	}
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig context %q: %w", name, err)
	}
	return cfg, name, nil
}

// Resource returns the API resource client for o.
func (c *Client) Resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	m, err := c.Mapping(o.GroupVersionKind())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", object.Key(o), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.Dynamic.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return c.Dynamic.Resource(m.Resource), nil
}

// Mapping finds the API resource of gvk. Discovery is cached; the first miss
// of a kind (a CRD applied since) refreshes the cache, later misses of it do
// not until ResetDiscovery.
func (c *Client) Mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) && !c.missed[gvk] {
		c.mapper.Reset()
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if meta.IsNoMatchError(err) {
		c.missed[gvk] = true
		return nil, fmt.Errorf("the cluster does not serve %s: %w", gvk, err)
	}
	return m, err
}

// ResetDiscovery forgets cached API resources, after CRDs change.
func (c *Client) ResetDiscovery() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mapper.Reset()
	c.missed = map[schema.GroupVersionKind]bool{}
}
