package doctor

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// WriteFixed writes the fixed content of files to w: one file as it is;
// several as one YAML stream, each file after a "# Source: path" comment and
// a document separator on a line of its own. Each file keeps its line
// endings; a file without a final newline gets one only where another file
// follows it.
func WriteFixed(w io.Writer, files []*File, fixed map[*File][]byte) error {
	content := func(f *File) []byte {
		if b, ok := fixed[f]; ok {
			return b
		}
		return f.Data
	}
	if len(files) == 1 {
		_, err := w.Write(content(files[0]))
		return err
	}
	var out bytes.Buffer
	prev := "\n"
	for i, f := range files {
		data := bytes.TrimPrefix(content(f), []byte("\ufeff")) // a byte order mark only starts a stream
		eol := streamEnding(data)
		if i > 0 {
			if !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
				out.WriteString(prev)
			}
			switch startsWith(data) {
			case "%": // directives come after a document end marker
				out.WriteString("..." + eol)
			case "---":
			default:
				out.WriteString("---" + eol)
			}
		}
		out.WriteString("# Source: " + strings.Map(printable, f.Path) + eol)
		out.Write(data)
		prev = eol
	}
	_, err := w.Write(out.Bytes())
	return err
}

// streamEnding is the first line ending of data, LF when it has none.
func streamEnding(data []byte) string {
	if i := bytes.IndexByte(data, '\n'); i > 0 && data[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

// startsWith says how data's first line that is not blank or a comment
// starts: "%" for a directive, "---" for a document marker, else "".
func startsWith(data []byte) string {
	s := bufio.NewScanner(bytes.NewReader(data))
	s.Buffer(nil, len(data)+1)
	for s.Scan() {
		l := strings.TrimRight(s.Text(), "\r")
		t := strings.TrimSpace(l)
		switch {
		case t == "" || strings.HasPrefix(t, "#"):
			continue
		case strings.HasPrefix(l, "%"):
			return "%"
		case l == "---" || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "---\t"):
			return "---"
		}
		return ""
	}
	return ""
}

func printable(r rune) rune {
	if r < ' ' || r == 0x7f {
		return '?'
	}
	return r
}
