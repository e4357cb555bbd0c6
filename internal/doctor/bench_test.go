package doctor

import (
	"path/filepath"
	"testing"
)

// BenchmarkCorpus is doctor -f on each file of the corpus in turn, under the
// default overlay, as a user would run it file by file.
func BenchmarkCorpus(b *testing.B) {
	paths, err := manifestFiles("testdata/corpus")
	if err != nil {
		b.Fatal(err)
	}
	opts := options(b, overlay("oauth2-proxy"))
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range paths {
			if filepath.Ext(p) == ".md" {
				continue
			}
			files, _ := ReadFiles([]string{p}, nil)
			CheckWorkloads(files, opts)
		}
	}
}
