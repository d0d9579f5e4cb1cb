package graphsim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// gctx is one Graph request (or one $batch item) being served.
type gctx struct {
	s       *Server
	t       *Tenant
	app     *App
	claims  *tokenClaims
	method  string
	path    string // after /v1.0, decoded
	segs    []string
	query   url.Values
	q       queryOpts
	header  http.Header
	body    []byte
	objects int // objects in the response, for latency
	// sel is what the answer's objects were selected by when it is not the
	// request's $select (a delta page: the select in its token).
	sel []string
}

// answerSelect is the $select the answer was shaped by.
func (c *gctx) answerSelect() []string {
	if c.sel != nil {
		return c.sel
	}
	return c.q.selects
}

// response is what a handler produces.
type response struct {
	status int
	header http.Header
	body   any    // marshalled to JSON unless raw
	raw    []byte // text/plain bodies ($count)
}

func (c *gctx) has(role string) bool {
	for _, r := range c.claims.Roles {
		if r == role {
			return true
		}
	}
	return false
}

func (c *gctx) hasWid(w string) bool {
	for _, x := range c.claims.Wids {
		if x == w {
			return true
		}
	}
	return false
}

func (c *gctx) require(roles ...string) *apiError {
	for _, r := range roles {
		if c.has(r) {
			return nil
		}
	}
	return errInsufficient()
}

func (c *gctx) eventual() bool {
	return strings.EqualFold(c.header.Get("ConsistencyLevel"), "eventual")
}

func (s *Server) serveGraph(w http.ResponseWriter, r *http.Request) {
	if s.opts.BeforeRequest != nil {
		s.opts.BeforeRequest(r)
	}
	reqID := s.newRequestID()
	clientReqID := r.Header.Get("client-request-id")
	w.Header().Set("request-id", reqID)
	if clientReqID != "" {
		w.Header().Set("client-request-id", clientReqID)
	}
	switch f := s.drawFault(); f {
	case faultDrop:
		dropAnswer()
	case fault500:
		s.writeError(w, reqID, clientReqID, newErr(500, "generalException", "An unexpected error occurred."))
		return
	case fault502:
		s.writeError(w, reqID, clientReqID, newErr(502, "badGateway", "The server returned an invalid response."))
		return
	case fault503, fault504:
		e := newErr(503, "serviceNotAvailable", "The service is temporarily unavailable. Please retry later.")
		if f == fault504 {
			e = newErr(504, "gatewayTimeout", "The gateway did not receive a timely response.")
		}
		if ra := s.opts.Faults.RetryAfter; ra > 0 {
			e.header = http.Header{"Retry-After": {formatRetryAfter(ra)}}
		}
		s.writeError(w, reqID, clientReqID, e)
		return
	case faultSlow:
		time.Sleep(s.opts.Faults.SlowDelay)
	case faultDropAfterWrite:
		if r.Method != http.MethodGet {
			// The write takes effect; its answer is lost.
			rec := httptest.NewRecorder()
			s.handleGraph(rec, r, reqID, clientReqID)
			dropAnswer()
		}
	}
	s.handleGraph(w, r, reqID, clientReqID)
}

// dropAnswer ends the request without an answer: over HTTP/1.1 the server
// closes the connection, over HTTP/2 (what Graph speaks, and this server)
// it resets the request's stream. Either way the client cannot tell what
// became of its request.
func dropAnswer() { panic(http.ErrAbortHandler) }

func (s *Server) handleGraph(w http.ResponseWriter, r *http.Request, reqID, clientReqID string) {
	if s.opts.Conformance {
		s.conf.checkHeaders(r)
	}
	claims, aerr := s.authenticate(r)
	if aerr != nil {
		s.writeError(w, reqID, clientReqID, aerr)
		return
	}
	body, err := readBody(r)
	if err != nil {
		s.writeError(w, reqID, clientReqID, newErr(400, "BadRequest", "The request body could not be read: "+err.Error()))
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1.0")
	var resp *response
	var e *apiError
	var latency time.Duration
	if path == "/$batch" && r.Method == http.MethodPost {
		resp, e, latency = s.serveBatch(claims, body, reqID, clientReqID)
		if s.opts.Conformance && resp != nil {
			s.conf.checkBatch(s.URL()+"/v1.0", resp)
		}
	} else {
		resp, e, latency = s.exec(claims, r.Method, path, r.URL.Query(), r.Header, body)
	}
	s.sleep(latency)
	if e != nil {
		s.writeError(w, reqID, clientReqID, e)
		return
	}
	for k, vs := range resp.header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	switch {
	case resp.raw != nil:
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(resp.status)
		_, _ = w.Write(resp.raw)
	case resp.body != nil:
		w.Header().Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
		w.WriteHeader(resp.status)
		_ = json.NewEncoder(w).Encode(resp.body)
	default:
		w.WriteHeader(resp.status)
	}
}

func (s *Server) authenticate(r *http.Request) (*tokenClaims, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, newErr(401, "InvalidAuthenticationToken", "Access token is empty.")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, newErr(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
	}
	c, err := s.parseToken(tok)
	if err != nil {
		return nil, newErr(401, "InvalidAuthenticationToken", "Access token validation failure.")
	}
	if s.clock.now().Unix() >= c.Exp {
		return nil, newErr(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
	}
	return c, nil
}

// exec serves one request for an authenticated caller: routing, permission,
// throttling and the operation itself. It returns the simulated latency for
// the caller to wait out.
func (s *Server) exec(claims *tokenClaims, method, path string, query url.Values, header http.Header, body []byte) (*response, *apiError, time.Duration) {
	t := s.tenant(claims.Tid)
	if t == nil {
		return nil, newErr(401, "InvalidAuthenticationToken", "Access token validation failure: unknown tenant."), 0
	}
	s.mu.Lock()
	app := t.apps[claims.AppID]
	s.mu.Unlock()
	if app == nil {
		return nil, newErr(401, "InvalidAuthenticationToken", "Access token validation failure: unknown application."), 0
	}
	q, qerr := parseQuery(query)
	c := &gctx{s: s, t: t, app: app, claims: claims, method: method, path: path, query: query, q: q, header: header, body: body}
	c.segs = strings.Split(strings.Trim(path, "/"), "/")
	s.Requests.Add(1)

	write := method != http.MethodGet
	s.mu.Lock()
	budget := t.ruBudget()
	forced, forcedWait, forcedDate := t.forcedThrottle > 0, t.forcedWait, t.forcedDate
	if forced {
		t.forcedThrottle--
	} else if t.sustainedThrottle() {
		forced, forcedWait, forcedDate = true, t.throttleWait, false
	}
	s.mu.Unlock()
	v := s.th.charge(claims.AppID, t.ID, budget, ruCost(method, path, q), write)
	if forced && !v.throttled {
		v.throttled, v.retryAfter, v.scope, v.info = true, forcedWait, "Tenant_Application/ReadWrite/"+claims.AppID+"/"+t.ID, "ResourceUnitLimitExceeded"
	}
	hdr := http.Header{}
	hdr.Set("x-ms-resource-unit", strconv.Itoa(ruCost(method, path, q)))
	if v.limitPct > 0 {
		hdr.Set("x-ms-throttle-limit-percentage", strconv.FormatFloat(v.limitPct, 'f', 2, 64))
	}
	if v.throttled {
		s.Throttled.Add(1)
		e := newErr(429, "TooManyRequests", "Please retry again later.")
		e.header = hdr
		e.header.Set("Retry-After", formatRetryAfter(v.retryAfter))
		if forced && forcedDate {
			e.header.Set("Retry-After", time.Now().Add(v.retryAfter).UTC().Format(http.TimeFormat))
		}
		e.header.Set("x-ms-throttle-scope", v.scope)
		e.header.Set("x-ms-throttle-information", v.info)
		return nil, e, 0
	}
	if write {
		s.Writes.Add(1)
	}
	if qerr != nil {
		qerr.header = hdr
		return nil, qerr, 0
	}
	op := operation(method, c.segs)
	refused := c.refuse(op)
	if s.opts.Conformance {
		s.conf.checkRequest(op, refused)
		s.conf.checkQuery(c, op)
	}
	if refused != nil {
		refused.header = hdr
		return nil, refused, 0
	}
	var resp *response
	var e *apiError
	if isSubscriptions(c.segs) {
		// Not under the tenant lock: creating one calls the receiver.
		resp, e = s.serveSubscriptions(c)
	} else {
		if method == http.MethodGet {
			s.mu.RLock()
			resp, e = s.routeWithFaults(c)
			s.mu.RUnlock()
		} else {
			s.mu.Lock()
			resp, e = s.routeWithFaults(c)
			s.mu.Unlock()
		}
	}
	latency := s.opts.Latency.Read + time.Duration(c.objects)*s.opts.Latency.PerObject
	if write {
		latency = s.opts.Latency.Write
	}
	if e != nil {
		if e.header == nil {
			e.header = http.Header{}
		}
		for k, vs := range hdr {
			e.header[k] = vs
		}
		return nil, e, latency
	}
	if resp.header == nil {
		resp.header = http.Header{}
	}
	for k, vs := range hdr {
		resp.header[k] = vs
	}
	if s.opts.Conformance {
		s.conf.checkAnswer(c, op, resp)
	}
	return resp, nil, latency
}

func notFound(what, id string) *apiError {
	return newErr(404, "Request_ResourceNotFound", fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", id))
}

// route dispatches to the operation. s.mu is held.
func (s *Server) route(c *gctx) (*response, *apiError) {
	seg := c.segs
	n := len(seg)
	m := c.method
	is := func(i int, v ...string) bool {
		if i >= n {
			return false
		}
		for _, x := range v {
			if seg[i] == x {
				return true
			}
		}
		return false
	}
	switch {
	case n == 1 && is(0, "$batch") && m == "POST":
		return nil, newErr(400, "BadRequest", "Nested $batch requests are not supported.")
	case n == 1 && is(0, "users") && m == "GET":
		return c.listUsers()
	case n == 1 && is(0, "users") && m == "POST":
		return c.createUser()
	case n == 2 && is(0, "users") && is(1, "$count") && m == "GET":
		return c.count("users")
	case n == 2 && is(0, "users") && is(1, "delta", "delta()") && m == "GET":
		return c.delta("users")
	case n == 2 && is(0, "users") && m == "GET":
		return c.getUser(seg[1])
	case n == 2 && is(0, "users") && m == "PATCH":
		return c.updateUser(seg[1])
	case n == 2 && is(0, "users") && m == "DELETE":
		return c.deleteUser(seg[1])
	case n == 3 && is(0, "users") && is(2, "assignLicense", "microsoft.graph.assignLicense") && m == "POST":
		return c.assignLicense(seg[1])
	case n == 1 && is(0, "groups") && m == "GET":
		return c.listGroups()
	case n == 1 && is(0, "groups") && m == "POST":
		return c.createGroup()
	case n == 2 && is(0, "groups") && is(1, "$count") && m == "GET":
		return c.count("groups")
	case n == 2 && is(0, "groups") && is(1, "delta", "delta()") && m == "GET":
		return c.delta("groups")
	case n == 2 && is(0, "groups") && m == "GET":
		return c.getGroup(seg[1])
	case n == 2 && is(0, "groups") && m == "PATCH":
		return c.updateGroup(seg[1])
	case n == 2 && is(0, "groups") && m == "DELETE":
		return c.deleteGroup(seg[1])
	case n == 3 && is(0, "groups") && is(2, "members") && m == "GET":
		return c.listMembers(seg[1])
	case n == 4 && is(0, "groups") && is(2, "members") && is(3, "$ref") && m == "POST":
		return c.addMember(seg[1])
	case n == 5 && is(0, "groups") && is(2, "members") && is(4, "$ref") && m == "DELETE":
		return c.removeMember(seg[1], seg[3])
	case n == 1 && strings.HasPrefix(seg[0], "applications(appId=") && m == "GET":
		if id, ok := appIDOf(seg[0]); ok {
			return c.getApplication(id)
		}
	case n == 1 && is(0, "subscribedSkus") && m == "GET":
		return c.subscribedSkus()
	case n == 3 && is(0, "directory") && is(1, "deletedItems") && is(2, "microsoft.graph.user", "graph.user", "microsoft.graph.group", "graph.group") && m == "GET":
		return c.listDeleted(strings.HasSuffix(seg[2], "user"))
	case n == 3 && is(0, "directory") && is(1, "deletedItems") && m == "GET":
		return c.getDeleted(seg[2])
	case n == 3 && is(0, "directory") && is(1, "deletedItems") && m == "DELETE":
		return c.purgeDeleted(seg[2])
	case n == 4 && is(0, "directory") && is(1, "deletedItems") && is(3, "restore", "microsoft.graph.restore") && m == "POST":
		return c.restoreDeleted(seg[2])
	}
	return nil, newErr(400, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", seg[n-1]))
}

// --- shared helpers -------------------------------------------------------

// project keeps the selected properties (or the defaults) of an object.
func project(all map[string]any, selects []string, defaults []string, typeName string) (map[string]any, *apiError) {
	keep := defaults
	if len(selects) > 0 {
		keep = selects
	}
	out := make(map[string]any, len(keep)+2)
	out["id"] = all["id"]
	if t, ok := all["@odata.type"]; ok {
		out["@odata.type"] = t // items of directoryObject collections name their type
	}
	for _, k := range keep {
		if k == "" {
			continue
		}
		v, ok := all[k]
		if !ok {
			if len(selects) > 0 {
				return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Could not find a property named '%s' on type 'microsoft.graph.%s'.", k, typeName))
			}
			continue
		}
		out[k] = v
	}
	return out, nil
}

func (c *gctx) visible(at time.Time) bool { return !time.Now().Before(at) }

// context is an answer's @odata.context in Graph's form: the entity set,
// the selected properties in parentheses, /$entity for a single object
// (…/$metadata#users(id,displayName)/$entity).
func (c *gctx) context(set string) string {
	set, entity := strings.CutSuffix(set, "/$entity")
	if sel := c.answerSelect(); len(sel) > 0 {
		set += "(" + strings.Join(sel, ",") + ")"
	}
	if entity {
		set += "/$entity"
	}
	return c.s.URL() + "/v1.0/$metadata#" + set
}

// linkWith is this request's URL with one query option set.
func (c *gctx) linkWith(key, val string) string {
	q := url.Values{}
	for k, vs := range c.query {
		if k != "$skiptoken" && k != "$deltatoken" {
			q[k] = vs
		}
	}
	q.Set(key, val)
	return c.s.URL() + "/v1.0" + c.path + "?" + q.Encode()
}

// mapGetter reads properties from a full record.
func mapGetter(m map[string]any) func(string) any { return func(p string) any { return m[p] } }

// list serves a collection: filter, $count, paging. It scans from the page
// cursor and stops once the page is full, reading properties through get
// (cheap) and building full records only for the page.
func (c *gctx) list(set, typeName string, ids []string, props func(id string) map[string]any, get func(id, prop string) any, defaults []string) (*response, *apiError) {
	return c.listText(set, typeName, ids, props, get, nil, defaults)
}

// listText is list with a reader of string properties for the filter
// (text; see filterExpr.matchID).
func (c *gctx) listText(set, typeName string, ids []string, props func(id string) map[string]any, get func(id, prop string) any, text func(id, prop string) (string, bool), defaults []string) (*response, *apiError) {
	if c.q.filter != nil && c.q.filter.advanced() && !(c.eventual() && c.q.count) {
		return nil, newErr(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property 'assignedLicenses' of resource '"+typeName+"'.")
	}
	if c.q.search != "" && !c.eventual() {
		return nil, newErr(400, "Request_UnsupportedQuery", "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual'")
	}
	matches := func(id string) bool {
		return c.q.filter == nil || c.q.filter.matchID(id, get, text)
	}
	size := 100
	if c.q.top > 0 {
		size = c.q.top
	}
	start := 0
	if c.q.skipToken != "" {
		if b, err := base64.RawURLEncoding.DecodeString(c.q.skipToken); err == nil {
			last := string(b)
			start = sort.SearchStrings(ids, last)
			if start < len(ids) && ids[start] == last {
				start++
			}
		}
	}
	values := make([]map[string]any, 0, min(size, len(ids)))
	next, lastID := "", ""
	for i := start; i < len(ids); i++ {
		if !matches(ids[i]) {
			continue
		}
		if len(values) == size {
			next = c.linkWith("$skiptoken", base64.RawURLEncoding.EncodeToString([]byte(lastID)))
			break
		}
		p, e := project(props(ids[i]), c.q.selects, defaults, typeName)
		if e != nil {
			return nil, e
		}
		values = append(values, p)
		lastID = ids[i]
	}
	c.objects = len(values)
	body := map[string]any{"@odata.context": c.context(set), "value": values}
	if c.q.count && c.eventual() && c.q.skipToken == "" {
		n := 0
		for _, id := range ids {
			if matches(id) {
				n++
			}
		}
		body["@odata.count"] = n
	}
	if next != "" {
		body["@odata.nextLink"] = next
	}
	return &response{status: 200, body: body}, nil
}

func (c *gctx) count(set string) (*response, *apiError) {
	if !c.eventual() {
		return nil, newErr(400, "Request_BadRequest", "$count is not currently supported.")
	}
	if e := c.require(readRoles(set)...); e != nil {
		return nil, e
	}
	n := len(c.t.users)
	if set == "groups" {
		n = len(c.t.groups)
	}
	if c.q.filter != nil {
		n = 0
		if set == "users" {
			for _, u := range c.t.users {
				if c.q.filter.match(func(p string) any { return c.userField(u, p) }) {
					n++
				}
			}
		} else {
			for _, g := range c.t.groups {
				if c.q.filter.match(mapGetter(groupProps(g))) {
					n++
				}
			}
		}
	}
	return &response{status: 200, raw: []byte(strconv.Itoa(n))}, nil
}

func readRoles(set string) []string {
	if set == "groups" {
		return []string{"Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
	}
	return []string{"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
}

// decodeStrict decodes a JSON object and rejects properties not in allowed,
// the way Graph does.
func decodeStrict(body []byte, typeName string, allowed map[string]bool) (map[string]json.RawMessage, *apiError) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return nil, newErr(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")
	}
	for k := range m {
		if strings.HasPrefix(k, "@odata.") {
			continue
		}
		if !allowed[k] {
			return nil, newErr(400, "Request_BadRequest", fmt.Sprintf("Invalid property '%s'.", k))
		}
	}
	return m, nil
}

func str(m map[string]json.RawMessage, k string) (*string, bool, *apiError) {
	raw, ok := m[k]
	if !ok {
		return nil, false, nil
	}
	if string(raw) == "null" {
		return nil, true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, true, newErr(400, "Request_BadRequest", fmt.Sprintf("Invalid value specified for property '%s' of resource.", k))
	}
	return &s, true, nil
}
