package doctor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
)

// edit sets a scalar at a path of an object, creating the mappings on the
// way: keys of mappings, or "#i" for item i of a sequence.
type edit struct {
	path  []string
	value string
	// quoted writes the value as a double-quoted string; else it is written
	// plain (a number).
	quoted bool
}

func (e *edit) text() string {
	if e.quoted {
		return strconv.Quote(e.value)
	}
	return e.value
}

// typed is the value as the YAML decoder reads it back.
func (e *edit) typed() any {
	if !e.quoted {
		if n, err := strconv.Atoi(e.value); err == nil {
			return n
		}
	}
	return e.value
}

// change is an edit resolved to text: lines inserted before line (1-based),
// or bytes [start, end) of line replaced by text.
type change struct {
	line       int
	lines      []string
	indent     int
	replace    bool
	start, end int
	text       string
}

// planned is one edit of a file: the findings it fixes, where it goes (the
// YAML document and the path in it), and its text.
type planned struct {
	findings []int
	doc      int
	path     []string
	edit     *edit
	change   *change
}

// Fix applies the fixes of the findings at or above min that it can apply to
// the files, marks them Fixed (or says in NotFixed why not), and returns
// each file's new content. Only the lines the fixes add or the values they
// change differ. Each fix is checked by parsing the result again: every
// document must read as before, but for the value the fix sets. A fix that
// does not pass is left out.
func (r *Report) Fix(files []*File, min Severity) map[*File][]byte {
	out := map[*File][]byte{}
	for _, f := range files {
		out[f] = r.fixFile(f, min)
	}
	return out
}

func (r *Report) fixFile(f *File, min Severity) []byte {
	var plan []*planned
	for _, d := range f.Docs {
		for i := range r.Findings {
			fd := &r.Findings[i]
			if fd.edit == nil || fd.Source != d.Source || !fd.Severity.AtLeast(min) {
				continue
			}
			path := append(slices.Clone(d.path), fd.edit.path...)
			k := slices.IndexFunc(plan, func(p *planned) bool { return p.doc == d.index && slices.Equal(p.path, path) })
			if k >= 0 {
				plan[k].findings = append(plan[k].findings, i)
				continue
			}
			c, err := resolve(d.node, fd.edit, f.Data)
			if err != nil {
				fd.NotFixed = err.Error()
				continue
			}
			plan = append(plan, &planned{findings: []int{i}, doc: d.index, path: path, edit: fd.edit, change: c})
		}
	}
	original, err := decodeAll(f.Data)
	if err != nil {
		for _, p := range plan {
			r.refuse(p, "the file does not read back: "+shorten(err.Error()))
		}
		return f.Data
	}
	var accepted []*planned
	data := f.Data
	for _, p := range plan {
		try := append(slices.Clone(accepted), p)
		next := apply(f.Data, try)
		if err := sameExcept(original, next, try); err != nil {
			r.refuse(p, "apply it by hand: "+err.Error())
			continue
		}
		accepted, data = try, next
	}
	for _, p := range accepted {
		for _, i := range p.findings {
			r.Findings[i].Fixed = true
		}
	}
	return data
}

func (r *Report) refuse(p *planned, why string) {
	for _, i := range p.findings {
		r.Findings[i].NotFixed = why
	}
}

// decodeAll reads every YAML document of data as plain values.
func decodeAll(data []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []any
	for {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var v any
		if len(node.Content) > 0 {
			if err := node.Decode(&v); err != nil {
				return nil, err
			}
		}
		docs = append(docs, v)
	}
}

// sameExcept checks that data reads as original with the values of the
// planned edits set.
func sameExcept(original []any, data []byte, plan []*planned) error {
	got, err := decodeAll(data)
	if err != nil {
		return fmt.Errorf("the result would not parse (%s)", shorten(err.Error()))
	}
	want := deepCopy(original).([]any)
	for _, p := range plan {
		if p.doc >= len(want) {
			return errors.New("the document is gone")
		}
		v, err := setPath(want[p.doc], p.path, p.edit.typed())
		if err != nil {
			return err
		}
		want[p.doc] = v
	}
	if !reflect.DeepEqual(want, got) {
		return errors.New("the manifest would change elsewhere (anchors, aliases or merge keys share the value)")
	}
	return nil
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = deepCopy(e)
		}
		return s
	}
	return v
}

// setPath sets path in v to value, creating mappings on the way.
func setPath(v any, path []string, value any) (any, error) {
	if len(path) == 0 {
		return value, nil
	}
	seg := path[0]
	if n, ok := strings.CutPrefix(seg, "#"); ok {
		s, isSeq := v.([]any)
		i, err := strconv.Atoi(n)
		if !isSeq || err != nil || i >= len(s) {
			return nil, fmt.Errorf("no item %s", n)
		}
		e, err := setPath(s[i], path[1:], value)
		s[i] = e
		return s, err
	}
	if v == nil {
		v = map[string]any{}
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s is not in a mapping", seg)
	}
	e, err := setPath(m[seg], path[1:], value)
	m[seg] = e
	return m, err
}

// apply makes the changes of plan to data.
func apply(data []byte, plan []*planned) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	changes := make([]*change, len(plan))
	for i, p := range plan {
		changes[i] = p.change
	}
	// From the bottom, so that the line numbers above stay right; on one
	// line, replacements from the right, then insertions, the shallowest
	// first so that a deeper block ends up above it.
	sort.SliceStable(changes, func(i, j int) bool {
		a, b := changes[i], changes[j]
		switch {
		case a.line != b.line:
			return a.line > b.line
		case a.replace != b.replace:
			return a.replace
		case a.replace:
			return a.start > b.start
		}
		return a.indent < b.indent
	})
	for _, c := range changes {
		i := c.line - 1
		if c.replace {
			l := lines[i]
			lines[i] = l[:c.start] + c.text + l[c.end:]
			continue
		}
		eol := lineEnding(lines, i)
		if i >= len(lines) {
			if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
				lines[n-1] += eol
			}
			i = len(lines)
		}
		add := make([]string, len(c.lines))
		for k, s := range c.lines {
			add[k] = s + eol
		}
		lines = slices.Insert(lines, i, add...)
	}
	return []byte(strings.Join(lines, ""))
}

// lineEnding is the line ending of the lines around line i: CRLF or LF.
func lineEnding(lines []string, i int) string {
	for _, k := range []int{i - 1, i} {
		if k >= 0 && k < len(lines) && strings.HasSuffix(lines[k], "\n") {
			if strings.HasSuffix(lines[k], "\r\n") {
				return "\r\n"
			}
			return "\n"
		}
	}
	return "\n"
}

// resolve finds where e goes in the object rooted at node.
func resolve(node *yaml.Node, e *edit, data []byte) (*change, error) {
	lines := strings.SplitAfter(string(data), "\n")
	cur := node
	for i, seg := range e.path {
		where := strings.Join(e.path[:i], ".")
		if cur.Kind == yaml.AliasNode {
			return nil, fmt.Errorf("%s is an alias; apply the fix by hand", where)
		}
		if n, ok := strings.CutPrefix(seg, "#"); ok {
			k, _ := strconv.Atoi(n)
			if cur.Kind != yaml.SequenceNode || k >= len(cur.Content) {
				return nil, fmt.Errorf("no item %d at %s", k, where)
			}
			cur = cur.Content[k]
			continue
		}
		if isNull(cur) && cur.Value != "" {
			return nullReplacement(cur, e.path[i:], e.text(), lines)
		}
		if cur.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s is not a mapping; apply the fix by hand", where)
		}
		next := valueOf(cur, seg)
		if next == nil {
			return insertion(cur, e.path[i:], e.text(), lines)
		}
		if i == len(e.path)-1 {
			return replacement(next, e.text(), lines)
		}
		cur = next
	}
	return nil, errors.New("nothing to change")
}

func valueOf(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// offset is the byte offset on line of the 1-based character column col,
// as the YAML parser counts them (a byte order mark does not count).
func offset(line string, col int) (int, bool) {
	off := bomLen(line)
	for k := 1; k < col; k++ {
		if off >= len(line) {
			return 0, false
		}
		_, w := utf8.DecodeRuneInString(line[off:])
		off += w
	}
	return off, off <= len(line)
}

func bomLen(line string) int {
	if strings.HasPrefix(line, "\ufeff") {
		return len("\ufeff")
	}
	return 0
}

// plainKey matches keys that need no quotes.
var plainKey = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./-]*$`)

func keyText(k string) string {
	if plainKey.MatchString(k) {
		return k
	}
	return strconv.Quote(k)
}

// flowText is keys (each nested in the one before) and value in flow style,
// keys quoted so that JSON stays JSON.
func flowText(keys []string, value string) string {
	s := value
	for i := len(keys) - 1; i >= 0; i-- {
		s = strconv.Quote(keys[i]) + ": " + s
		if i > 0 {
			s = "{" + s + "}"
		}
	}
	return s
}

// insertion adds keys (each nested in the one before) and the value to the
// mapping m.
func insertion(m *yaml.Node, keys []string, value string, lines []string) (*change, error) {
	if m.Line < 1 || m.Line > len(lines) {
		return nil, errors.New("the mapping is past the end of the file")
	}
	if m.Style&yaml.FlowStyle != 0 {
		// Right after the opening brace.
		l := lines[m.Line-1]
		at, ok := offset(l, m.Column)
		if !ok || at >= len(l) || l[at] != '{' {
			return nil, fmt.Errorf("cannot find the mapping at line %d; apply the fix by hand", m.Line)
		}
		text := flowText(keys, value)
		if len(m.Content) > 0 {
			text += ", "
		}
		return &change{line: m.Line, replace: true, start: at + 1, end: at + 1, text: text}, nil
	}
	if len(m.Content) == 0 {
		return nil, fmt.Errorf("cannot add %s to an empty mapping at line %d; apply the fix by hand", strings.Join(keys, "."), m.Line)
	}
	first := m.Content[0]
	indent := first.Column - 1
	var block []string
	for i, k := range keys {
		pad := strings.Repeat(" ", indent+2*i)
		if i == len(keys)-1 {
			block = append(block, pad+keyText(k)+": "+value)
		} else {
			block = append(block, pad+keyText(k)+":")
		}
	}
	c := &change{lines: block, indent: indent}
	startsLine := func(n *yaml.Node) bool {
		if n.Line < 1 || n.Line > len(lines) {
			return false
		}
		l := lines[n.Line-1]
		at, ok := offset(l, n.Column)
		return ok && strings.TrimLeft(l[bomLen(l):at], " ") == ""
	}
	// Before the second key; else after the only entry when it is on one
	// line; else before it, when it starts its line.
	v := m.Content[1]
	switch {
	case len(m.Content) >= 4 && startsLine(m.Content[2]) && m.Content[2].Column == first.Column:
		c.line = m.Content[2].Line
	case v.Kind == yaml.ScalarNode && v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) == 0 && v.Line == first.Line:
		c.line = first.Line + 1
	case startsLine(first):
		c.line = first.Line
	default:
		return nil, fmt.Errorf("cannot place %s in the mapping at line %d; apply the fix by hand", strings.Join(keys, "."), m.Line)
	}
	return c, nil
}

// replacement replaces the scalar n by text in place.
func replacement(n *yaml.Node, text string, lines []string) (*change, error) {
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("expected a value at line %d; apply the fix by hand", n.Line)
	}
	if n.Line < 1 || n.Line > len(lines) {
		return nil, errors.New("the value is past the end of the file")
	}
	l := lines[n.Line-1]
	start, ok := offset(l, n.Column)
	if !ok {
		return nil, fmt.Errorf("cannot find the value at line %d; apply the fix by hand", n.Line)
	}
	end, ok := scalarEnd(l, start, n)
	if !ok {
		return nil, fmt.Errorf("cannot replace the value at line %d (it spans lines, or has a tag or anchor); apply the fix by hand", n.Line)
	}
	return &change{line: n.Line, replace: true, start: start, end: end, text: text}, nil
}

// nullReplacement writes keys and value, in flow style, over the null at n.
func nullReplacement(n *yaml.Node, keys []string, value string, lines []string) (*change, error) {
	c, err := replacement(n, "", lines)
	if err != nil {
		return nil, err
	}
	c.text = "{" + flowText(keys, value) + "}"
	return c, nil
}

// scalarEnd finds where the scalar n that starts at byte start of line l
// ends on that line.
func scalarEnd(l string, start int, n *yaml.Node) (int, bool) {
	if start >= len(l) {
		return 0, false
	}
	switch n.Style {
	case yaml.DoubleQuotedStyle:
		if l[start] != '"' {
			return 0, false
		}
		for k := start + 1; k < len(l); k++ {
			switch l[k] {
			case '\\':
				k++
			case '"':
				return k + 1, true
			}
		}
	case yaml.SingleQuotedStyle:
		if l[start] != '\'' {
			return 0, false
		}
		for k := start + 1; k < len(l); k++ {
			if l[k] == '\'' {
				if k+1 < len(l) && l[k+1] == '\'' {
					k++
					continue
				}
				return k + 1, true
			}
		}
	case 0:
		// A plain scalar on one line is written as its value.
		if end := start + len(n.Value); n.Value != "" && end <= len(l) && l[start:end] == n.Value {
			return end, true
		}
	}
	return 0, false
}
