package graphsim

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// ResponseFaults make a tenant answer like a broken Graph, to test a
// client's guards: paging that never ends, error bodies of any size, an
// empty answer to $count. Set them with Admin.SetResponseFaults; the zero
// value is a healthy Graph.
type ResponseFaults struct {
	// RepeatNextLink: every page of a collection or delta round links to
	// the same nextLink, and following it serves page one again with that
	// link, forever.
	RepeatNextLink bool
	// EndlessPages: every page links to a new, empty page, forever (each
	// nextLink is different).
	EndlessPages bool
	// HugeErrorBytes answers every Graph request with an error of
	// HugeErrorStatus (default 500) whose message has this many bytes.
	// Default 0: off.
	HugeErrorBytes  int
	HugeErrorStatus int
	// NoContentCount answers $count requests (/users/$count,
	// /groups/$count) with 204 No Content.
	NoContentCount bool
	// NextLinkTo is a base URL ("https://host:port"): every page's
	// @odata.nextLink points there instead of at the simulator (same path
	// and query), like a Graph answer that would lead a client to another
	// host. Default "": off.
	NextLinkTo string
	// RedirectTo is a base URL: every GET is answered 307 Temporary
	// Redirect to the same path and query there, marked so that the
	// redirected request, when it comes back to the simulator, is served.
	// RedirectTo set to the simulator's own URL is one redirect on the
	// same host. Default "": off.
	RedirectTo string
	// RedirectLoop answers every GET 307 to its own URL, forever.
	RedirectLoop bool
}

// SetResponseFaults sets (or with the zero value clears) the tenant's
// broken-Graph answers.
func (a *Admin) SetResponseFaults(f ResponseFaults) { a.t.responseFaults = f }

// Skip tokens of the fault chains. A request carrying one is answered by
// the fault, not routed.
const (
	repeatToken  = "graphsim-repeat"
	endlessToken = "graphsim-endless-"
	// redirectedParam marks a request RedirectTo sent on.
	redirectedParam = "graphsim-redirected"
)

// routeWithFaults routes c through the tenant's response faults. s.mu is
// held.
func (s *Server) routeWithFaults(c *gctx) (*response, *apiError) {
	f := c.t.responseFaults
	if f == (ResponseFaults{}) {
		return s.route(c)
	}
	if f.HugeErrorBytes > 0 {
		return nil, f.hugeError()
	}
	if f.NoContentCount && c.method == http.MethodGet && len(c.segs) == 2 && c.segs[1] == "$count" {
		return &response{status: http.StatusNoContent}, nil
	}
	if r := f.redirect(c); r != nil {
		return r, nil
	}
	paged := c.method == http.MethodGet && (f.RepeatNextLink || f.EndlessPages)
	if !paged {
		resp, e := s.route(c)
		if e == nil && f.NextLinkTo != "" {
			f.moveNextLink(c, resp)
		}
		return resp, e
	}
	tok := c.query.Get("$skiptoken")
	if n, ok := strings.CutPrefix(tok, endlessToken); ok && f.EndlessPages {
		i, _ := strconv.Atoi(n)
		return c.faultPage(nil, endlessToken+strconv.Itoa(i+1)), nil
	}
	if tok == repeatToken && f.RepeatNextLink {
		c.query.Del("$skiptoken")
		c.q.skipToken = ""
	}
	resp, e := s.route(c)
	if e != nil || resp.body == nil {
		return resp, e
	}
	body, ok := resp.body.(map[string]any)
	if _, paging := body["value"]; !ok || !paging {
		return resp, nil
	}
	next := repeatToken
	if !f.RepeatNextLink {
		next = endlessToken + "1"
	}
	return c.faultPage(body["value"], next), nil
}

// faultPage is a page of values linking to the fault chain's next token.
func (c *gctx) faultPage(values any, token string) *response {
	if values == nil {
		values = []any{}
	}
	link := c.s.URL() + "/v1.0" + c.path + "?$skiptoken=" + token
	set := c.segs[0] // users, groups: delta answers name the entity set
	if len(c.segs) == 3 && c.segs[2] == "members" {
		set = "directoryObjects"
	}
	return &response{status: http.StatusOK, body: map[string]any{"@odata.context": c.context(set), "value": values, "@odata.nextLink": link}}
}

// redirect is the 307 of RedirectTo or RedirectLoop for c, or nil.
func (f ResponseFaults) redirect(c *gctx) *response {
	if c.method != http.MethodGet {
		return nil
	}
	q := url.Values{}
	for k, vs := range c.query {
		q[k] = vs
	}
	var to string
	switch {
	case f.RedirectLoop:
		to = c.s.URL()
	case f.RedirectTo != "" && !q.Has(redirectedParam):
		to = strings.TrimRight(f.RedirectTo, "/")
		q.Set(redirectedParam, "1")
	default:
		return nil
	}
	loc := to + "/v1.0" + c.path
	if len(q) > 0 {
		loc += "?" + q.Encode()
	}
	return &response{status: http.StatusTemporaryRedirect, header: http.Header{"Location": {loc}}}
}

// moveNextLink points a page's nextLink at NextLinkTo.
func (f ResponseFaults) moveNextLink(c *gctx, resp *response) {
	body, ok := resp.body.(map[string]any)
	if !ok {
		return
	}
	if next, ok := body["@odata.nextLink"].(string); ok {
		body["@odata.nextLink"] = strings.TrimRight(f.NextLinkTo, "/") + strings.TrimPrefix(next, c.s.URL())
	}
}

func (f ResponseFaults) hugeError() *apiError {
	status := f.HugeErrorStatus
	if status == 0 {
		status = http.StatusInternalServerError
	}
	return newErr(status, "generalException", strings.Repeat("x", f.HugeErrorBytes))
}
