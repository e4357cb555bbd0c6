package doctor

import (
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// corpusSettings are the installations the corpus is judged under: the
// overlays, the opt-in egress component, a mesh that refuses unknown hosts,
// and istiod without native sidecars.
var corpusSettings = []struct {
	name    string
	setting setting
	// extra are files of testdata/settings read with the manifests.
	extra []string
}{
	{"oauth2-proxy", overlay("oauth2-proxy"), nil},
	{"gke", overlay("gke"), nil},
	{"insecure", overlay("insecure"), nil},
	{"ambient", overlay("ambient"), nil},
	{"sidecar-egress", setting{overlay: "oauth2-proxy", components: []string{"sidecar-egress"}}, nil},
	{"registry-only", overlay("oauth2-proxy"), []string{"testdata/settings/registry-only.yaml"}},
	{"registry-only+gcs", overlay("oauth2-proxy"), []string{"testdata/settings/registry-only.yaml", "testdata/settings/gcs-serviceentry.yaml"}},
	{"no-native", setting{overlay: "oauth2-proxy", native: ptr(false)}, nil},
	{"insecure-no-native", setting{overlay: "insecure", native: ptr(false)}, nil},
}

// corpus are public manifests (testdata/corpus, see its README.md) and the
// findings expected for them under each setting: a key names the settings,
// separated by spaces, that give the same findings; "*" names the others.
// read is what reading them must say (in an error or a note), if anything.
var corpus = []struct {
	files []string
	want  map[string][]string
	read  string
}{
	{[]string{"istio/cronjob.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/hello-cni.injected.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/hello-host-network.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/hello.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/init-no-intercept.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/list.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/multi-init.injected.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/multi-init.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native insecure-no-native": {"Deployment/hello KF001 warning init-one", "Deployment/hello KF001 warning init-two"},
	}, ""},
	{[]string{"istio/native-sidecar-opt-in.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/native-sidecar-opt-out.injected.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/native-sidecar-opt-out.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/proxy-override.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"istio/traffic-annotations-empty-includes.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"k8s-examples/cockroachdb-statefulset.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native insecure-no-native": {"StatefulSet/cockroachdb KF001 warning bootstrap"},
	}, ""},
	{[]string{"k8s-examples/elasticsearch-rc.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native insecure-no-native": {"ReplicationController/es KF001 warning init-sysctl"},
	}, ""},
	{[]string{"k8s-examples/guestbook-all-in-one.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"k8s-examples/javaweb-pod.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native insecure-no-native": {"Pod/javaweb KF001 warning war"},
	}, ""},
	{[]string{"k8s-examples/vllm-deployment.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/custom-model-input.json"}, map[string][]string{
		"*": nil,
	}, "custom-model-input.json: not a Kubernetes manifest"},
	{[]string{"kserve/custom-model.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/hf-isvc.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/huggingface-llama2 KF003 info predictor/storage-initializer"},
		"registry-only registry-only+gcs":                  {"InferenceService/huggingface-llama2 KF003 error predictor/storage-initializer"},
		"no-native":                                        nil,
		"insecure-no-native":                               {"InferenceService/huggingface-llama2 KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/income-explainer.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/income KF003 info explainer/storage-initializer", "InferenceService/income KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/income KF003 error explainer/storage-initializer", "InferenceService/income KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/income KF001 error explainer/storage-initializer", "InferenceService/income KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/iris-input.json"}, map[string][]string{
		"*": nil,
	}, "iris-input.json: not a Kubernetes manifest"},
	{[]string{"kserve/minio-s3-secret.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/minio.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/mnist-pvc-v1alpha2.yaml"}, map[string][]string{
		"*": nil,
	}, "InferenceService/mnist-sample (testdata/corpus/kserve/mnist-pvc-v1alpha2.yaml, document 1): no spec.predictor, skipped"},
	{[]string{"kserve/oci-fetch.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/kserve-test/sklearn-oci-fetch KF003 info predictor/storage-initializer"},
		"registry-only registry-only+gcs":                  {"InferenceService/kserve-test/sklearn-oci-fetch KF003 error predictor/storage-initializer"},
		"no-native":                                        nil,
		"insecure-no-native":                               {"InferenceService/kserve-test/sklearn-oci-fetch KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/oci-image-volume.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/pvc-init-job.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/s3-secret.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/sklearn-storagespec.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs no-native": nil,
		"insecure-no-native": {"InferenceService/example-sklearn-isvc KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/sklearn.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/sklearn-iris KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/sklearn-iris KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/sklearn-iris KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/storage-config.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kserve/tensorflow-s3.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/mnist-s3 KF003 info predictor/storage-initializer"},
		"registry-only registry-only+gcs":                  {"InferenceService/mnist-s3 KF003 error predictor/storage-initializer"},
		"no-native":                                        nil,
		"insecure-no-native":                               {"InferenceService/mnist-s3 KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/tensorflow.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/flower-sample KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/flower-sample KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/flower-sample KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/torch-transformer.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/torch-transformer KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/torch-transformer KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/torch-transformer KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/torchserve-bert-custom.yaml"}, map[string][]string{
		"*": nil,
	}, "torchserve-bert-custom.yaml: document 1: yaml: line 9: did not find expected key"},
	{[]string{"kserve/torchserve.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/torchserve KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/torchserve KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/torchserve KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/transformer-collocation.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/custom-transformer-collocation KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/custom-transformer-collocation KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/custom-transformer-collocation KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/triton-bert-transformer.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/bert-v2 KF003 info predictor/storage-initializer", "InferenceService/bert-v2 KF003 info transformer/storage-initializer"},
		"registry-only":               {"InferenceService/bert-v2 KF003 error predictor/storage-initializer", "InferenceService/bert-v2 KF003 error transformer/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/bert-v2 KF001 error predictor/storage-initializer", "InferenceService/bert-v2 KF001 error transformer/storage-initializer"},
	}, ""},
	{[]string{"kserve/xgboost.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/xgboost-iris KF003 info predictor/storage-initializer"},
		"registry-only":               {"InferenceService/xgboost-iris KF003 error predictor/storage-initializer"},
		"registry-only+gcs no-native": nil,
		"insecure-no-native":          {"InferenceService/xgboost-iris KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kubeflow/istio-dummy-deployment.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/katib-experiment.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/kubeflow-namespace.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/metadata-grpc-tls-patch.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native insecure-no-native": {"Deployment/metadata-grpc-deployment KF001 warning generate-config"},
	}, ""},
	{[]string{"kubeflow/mysql-deployment.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/notebook-test.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/notebook-v1-sample.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/pytorchjob.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/seaweedfs-deployment.yaml"}, map[string][]string{
		"*": nil,
	}, ""},
	{[]string{"kubeflow/kubeflow-namespace.yaml", "kubeflow/seaweedfs-deployment.yaml"}, map[string][]string{
		"oauth2-proxy gke ambient sidecar-egress registry-only registry-only+gcs no-native": nil,
		"insecure insecure-no-native": {"Deployment/kubeflow/seaweedfs KF005 error"},
	}, ""},
	{[]string{"kserve/tensorflow-s3.yaml", "kserve/s3-secret.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress": {"InferenceService/mnist-s3 KF003 info predictor/storage-initializer"},
		"registry-only registry-only+gcs":                  {"InferenceService/mnist-s3 KF003 error predictor/storage-initializer"},
		"no-native":                                        nil,
		"insecure-no-native":                               {"InferenceService/mnist-s3 KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/tensorflow-s3.yaml", "kserve/minio-s3-secret.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native":          {"InferenceService/mnist-s3 KF004 info predictor/storage-initializer"},
		"insecure-no-native": {"InferenceService/mnist-s3 KF001 error predictor/storage-initializer"},
	}, ""},
	{[]string{"kserve/sklearn-storagespec.yaml", "kserve/storage-config.yaml"}, map[string][]string{
		"oauth2-proxy gke insecure ambient sidecar-egress registry-only registry-only+gcs": nil,
		"no-native":          {"InferenceService/example-sklearn-isvc KF004 info predictor/storage-initializer"},
		"insecure-no-native": {"InferenceService/example-sklearn-isvc KF001 error predictor/storage-initializer"},
	}, ""},
}

// TestCorpus checks the findings on every manifest of the corpus under every
// setting.
func TestCorpus(t *testing.T) {
	listed := map[string]bool{}
	for _, c := range corpus {
		bySetting := map[string][]string{}
		for k, v := range c.want {
			for _, s := range strings.Fields(k) {
				if _, dup := bySetting[s]; dup {
					t.Fatalf("%v: setting %s given twice", c.files, s)
				}
				bySetting[s] = v
			}
		}
		var paths []string
		for _, f := range c.files {
			listed[f] = true
			paths = append(paths, filepath.Join("testdata/corpus", f))
		}
		for _, s := range corpusSettings {
			want, ok := bySetting[s.name]
			if !ok {
				want, ok = bySetting["*"]
			}
			if !ok {
				t.Errorf("%v: no expectation for setting %s", c.files, s.name)
				continue
			}
			t.Run(strings.Join(c.files, "+")+"/"+s.name, func(t *testing.T) {
				files, err := ReadFiles(append(slices.Clone(paths), s.extra...), nil)
				r := CheckWorkloads(files, options(t, s.setting))
				wantFindings(t, r, want)
				said := strings.Join(r.Notes, "\n")
				if err != nil {
					said += "\n" + err.Error()
				}
				if c.read != "" && !strings.Contains(said, c.read) || c.read == "" && err != nil {
					t.Errorf("reading says %q, want %q", said, c.read)
				}
			})
		}
	}
	err := filepath.WalkDir("testdata/corpus", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Ext(p) != ".md" && !listed[strings.TrimPrefix(p, "testdata/corpus/")] {
			t.Errorf("%s is in no case of the corpus table", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
