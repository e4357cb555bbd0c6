package doctor

import (
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// destination is a host a container connects to, as its manifest shows it.
type destination struct {
	// shown is what messages name: the host, or an object-store location.
	shown string
	// host is the DNS name the connection goes to.
	host string
	// inCluster is true for Kubernetes service names; namespace is the
	// service's namespace ("" for the workload's own).
	inCluster bool
	namespace string
	service   string
}

func (d destination) namespaceOr(ns string) string {
	if d.namespace == "" {
		return ns
	}
	return d.namespace
}

// serviceFQDN is the in-cluster host's full name, for Sidecar host patterns.
func (d destination) serviceFQDN(ns string) string {
	return d.service + "." + d.namespaceOr(ns) + ".svc.cluster.local"
}

func (d destination) matches(pattern string) bool { return hostMatches(pattern, d.host) }

// evidence is what a container's command, arguments, environment and image
// say about the network it needs.
type evidence struct {
	dests []destination
	// tool is the image of a network tool, when the container runs one.
	tool string
}

func (e evidence) any() bool { return len(e.dests) > 0 || e.tool != "" }

func (e *evidence) add(d destination) {
	if !slices.ContainsFunc(e.dests, func(x destination) bool { return x.shown == d.shown }) {
		e.dests = append(e.dests, d)
	}
}

// inside returns the destinations in the cluster.
func (e evidence) inside() []destination {
	var out []destination
	for _, d := range e.dests {
		if d.inCluster {
			out = append(out, d)
		}
	}
	return out
}

func shown(ds []destination) string {
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = d.shown
	}
	return strings.Join(names, ", ")
}

// urlPattern finds locations in text: URLs of the schemes workloads and
// KServe's storage initializer download from, and git's scp-like syntax.
var urlPattern = regexp.MustCompile(`(?i)\b(https?|s3|gs|hf|modelscope|git|hdfs|webhdfs|oci\+fetch)://([A-Za-z0-9._-]*)|\bgit@([A-Za-z0-9._-]+):`)

// Hosts behind the object-store schemes.
var schemeHosts = map[string]string{
	"gs":         "storage.googleapis.com",
	"s3":         "s3.amazonaws.com",
	"hf":         "huggingface.co",
	"modelscope": "www.modelscope.cn",
}

// networkTools are images whose only job is to move data over the network.
var networkTools = []string{"storage-initializer", "git-sync", "curl", "wget", "aws-cli", "cloud-sdk", "rclone", "gsutil"}

// endpointEnv are the variables S3 clients read their endpoint from.
var endpointEnv = []string{"AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"}

// network reads the evidence of container c.
func network(c *corev1.Container) evidence {
	var e evidence
	texts := append(append([]string{}, c.Command...), c.Args...)
	endpoints := map[string]string{}
	for _, env := range c.Env {
		texts = append(texts, env.Value)
		if slices.Contains(endpointEnv, env.Name) && env.Value != "" {
			endpoints["s3"] = env.Value
		}
		if env.Name == "HF_ENDPOINT" && env.Value != "" {
			endpoints["hf"] = env.Value
		}
	}
	for _, t := range texts {
		for _, m := range urlPattern.FindAllStringSubmatch(t, -1) {
			scheme, host := strings.ToLower(m[1]), m[2]+m[3]
			if m[3] != "" {
				scheme = "git"
			}
			d, ok := locate(scheme, host, m[0], endpoints)
			if ok {
				e.add(d)
			}
		}
	}
	repo, _, _ := strings.Cut(path.Base(c.Image), ":")
	for _, t := range networkTools {
		if strings.Contains(repo, t) {
			e.tool = repo
		}
	}
	return e
}

// locate is the destination of a location found in a container: the URL's
// host, the endpoint that replaces an object store's, or the object store's
// public host. Loopback and private addresses are left out: nothing shows
// whether they are in the mesh.
func locate(scheme, host, text string, endpoints map[string]string) (destination, bool) {
	if ep, ok := endpoints[scheme]; ok {
		h := endpointHost(ep)
		d := hostDestination(h)
		d.shown = text + " (endpoint " + h + ")"
		return d, h != "" && !local(h)
	}
	if public, ok := schemeHosts[scheme]; ok {
		return destination{shown: text, host: public}, true
	}
	if scheme == "oci+fetch" && !strings.ContainsAny(host, ".:") {
		return destination{shown: text, host: "registry-1.docker.io"}, true // a Docker Hub repository
	}
	if host == "" || local(host) {
		return destination{}, false
	}
	return hostDestination(host), true
}

// endpointHost is the host of an endpoint written as host[:port] or as a URL.
func endpointHost(ep string) string {
	if _, rest, ok := strings.Cut(ep, "://"); ok {
		ep = rest
	}
	ep, _, _ = strings.Cut(ep, "/")
	if h, _, ok := strings.Cut(ep, ":"); ok {
		return h
	}
	return ep
}

// hostDestination tells cluster hosts (service, service.namespace,
// service.namespace.svc, ....svc.cluster.local) from public ones.
func hostDestination(host string) destination {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	d := destination{shown: host, host: host}
	name := strings.TrimSuffix(strings.TrimSuffix(host, ".cluster.local"), ".svc")
	labels := strings.Split(name, ".")
	switch {
	case strings.HasSuffix(host, ".svc") || strings.HasSuffix(host, ".svc.cluster.local"):
		d.inCluster = true
	case len(labels) <= 2 && !slices.Contains(publicTLDs, labels[len(labels)-1]):
		d.inCluster = true
	}
	if d.inCluster {
		d.service = labels[0]
		if len(labels) > 1 {
			d.namespace = labels[1]
		}
	}
	return d
}

// local reports whether host is an address no sidecar rule decides:
// loopback (never redirected) or a private address (pod or service IPs, or a
// network the manifest does not describe).
func local(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && (a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsUnspecified())
}

// publicTLDs are top-level domains common in the URLs of data and code that
// workloads download; "name.namespace" hosts end in a namespace instead.
var publicTLDs = []string{"com", "org", "net", "io", "dev", "ai", "co", "cloud", "app", "edu", "gov", "info",
	"us", "uk", "eu", "de", "fr", "cn", "jp", "in", "ch", "nl", "ca", "au", "be", "se", "it", "es", "kr", "ru", "br"}
