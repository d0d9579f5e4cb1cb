package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/internal/redact"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// view is what every page template gets.
type view struct {
	Title   string
	Nav     string
	Session *session
	D       map[string]any
}

// Operator reports whether the signed-in person is an operator.
func (v view) Operator() bool { return v.Session != nil && v.Session.Role == RoleOperator }

var funcs = template.FuncMap{
	"since": since,
	"short": jobs.ShortAction,
	"mask":  redact.Text,
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"dur":      func(d worker.Duration) string { return time.Duration(d).Round(time.Millisecond).String() },
	"add":      func(a, b int) int { return a + b },
	"sub":      func(a, b int) int { return a - b },
	"outcomes": func() []string { return []string{"queued", "in flight", "succeeded", "failed", "settled"} },
	"healths": func() []string {
		return []string{"healthy", "not synced yet", "last round failed", "credentials refused"}
	},
	"query": func(v url.Values) string { return v.Encode() },
	"with1": func(v url.Values, k, val string) string {
		c := url.Values{}
		for kk, vv := range v {
			c[kk] = vv
		}
		c.Set(k, val)
		return c.Encode()
	},
	"pct": func(a, b int64) string {
		if b == 0 {
			return "0 %"
		}
		return fmt.Sprintf("%.1f %%", 100*float64(a)/float64(b))
	},
}

// parsePages parses each page with the layout.
func parsePages() (map[string]*template.Template, error) {
	files, err := assets.ReadDir("templates")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, f := range files {
		name := strings.TrimSuffix(f.Name(), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "templates/layout.html", path.Join("templates", f.Name()))
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

// render writes a page in the layout; a page that fails to render is a
// 500 with nothing half-written.
func (s *Server) render(w http.ResponseWriter, r *http.Request, ss *session, page, title string, d map[string]any) {
	var buf bytes.Buffer
	nav := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0]
	if err := s.pages[page].ExecuteTemplate(&buf, "layout", view{Title: title, Nav: nav, Session: ss, D: d}); err != nil {
		s.log.Error("console: render", "page", page, "error", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}
