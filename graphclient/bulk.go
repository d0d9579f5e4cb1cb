package graphclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The bulk reads (the /users segments of a full round and the delta rounds)
// decode Graph's pages straight into our records with encoding/json, through
// the same paced, authenticated transport as the SDK. The SDK's models cost
// too much at that volume: kiota builds a map of every field's deserializer
// for each object it reads (about 125 µs and a few KB of garbage per user,
// measured with the sync benchmark's CPU profile), which made a 100,000-user
// round CPU-bound on a small machine. Single-object reads and every write
// keep the SDK. TestBulkRecordsMatchTheSDK holds both paths to the same
// records.

// userJSON is a user as Graph sends it with UserSelect.
type userJSON struct {
	ID                    string     `json:"id"`
	UserPrincipalName     *string    `json:"userPrincipalName"`
	DisplayName           *string    `json:"displayName"`
	GivenName             *string    `json:"givenName"`
	Surname               *string    `json:"surname"`
	Mail                  *string    `json:"mail"`
	MailNickname          *string    `json:"mailNickname"`
	JobTitle              *string    `json:"jobTitle"`
	Department            *string    `json:"department"`
	OfficeLocation        *string    `json:"officeLocation"`
	MobilePhone           *string    `json:"mobilePhone"`
	BusinessPhones        []string   `json:"businessPhones"`
	AccountEnabled        *bool      `json:"accountEnabled"`
	UserType              *string    `json:"userType"`
	UsageLocation         *string    `json:"usageLocation"`
	CreatedDateTime       *time.Time `json:"createdDateTime"`
	OnPremisesSyncEnabled *bool      `json:"onPremisesSyncEnabled"`
	AssignedLicenses      []struct {
		SkuID         string   `json:"skuId"`
		DisabledPlans []string `json:"disabledPlans"`
	} `json:"assignedLicenses"`
	Removed *removedJSON `json:"@removed"`
}

type removedJSON struct {
	Reason string `json:"reason"`
}

func (r *removedJSON) reason() string {
	if r.Reason == "" {
		return RemovedSoft
	}
	return r.Reason
}

func (u *userJSON) record() User {
	out := User{ID: u.ID, UserPrincipalName: str(u.UserPrincipalName), DisplayName: str(u.DisplayName),
		GivenName: u.GivenName, Surname: u.Surname, Mail: u.Mail, MailNickname: u.MailNickname, JobTitle: u.JobTitle,
		Department: u.Department, OfficeLocation: u.OfficeLocation, MobilePhone: u.MobilePhone,
		BusinessPhones: u.BusinessPhones, AccountEnabled: u.AccountEnabled, UserType: u.UserType,
		UsageLocation: u.UsageLocation, CreatedDateTime: u.CreatedDateTime, OnPremisesSyncEnabled: u.OnPremisesSyncEnabled}
	if out.BusinessPhones == nil {
		out.BusinessPhones = []string{} // as the SDK gives it
	}
	for _, l := range u.AssignedLicenses {
		al := AssignedLicense{SkuID: strings.ToLower(l.SkuID), DisabledPlans: []string{}}
		for _, p := range l.DisabledPlans {
			al.DisabledPlans = append(al.DisabledPlans, strings.ToLower(p))
		}
		out.AssignedLicenses = append(out.AssignedLicenses, al)
	}
	return out
}

// groupJSON is a group entry of a groups delta page.
type groupJSON struct {
	ID              string     `json:"id"`
	DisplayName     *string    `json:"displayName"`
	Description     *string    `json:"description"`
	Mail            *string    `json:"mail"`
	MailNickname    *string    `json:"mailNickname"`
	MailEnabled     *bool      `json:"mailEnabled"`
	SecurityEnabled *bool      `json:"securityEnabled"`
	GroupTypes      []string   `json:"groupTypes"`
	Visibility      *string    `json:"visibility"`
	MembershipRule  *string    `json:"membershipRule"`
	CreatedDateTime *time.Time `json:"createdDateTime"`
	MembersDelta    []struct {
		ID      string          `json:"id"`
		Removed json.RawMessage `json:"@removed"`
	} `json:"members@delta"`
	Removed *removedJSON `json:"@removed"`
}

func (g *groupJSON) record() Group {
	out := Group{ID: g.ID, DisplayName: str(g.DisplayName), Description: g.Description, Mail: g.Mail,
		MailNickname: str(g.MailNickname), MailEnabled: boolv(g.MailEnabled), SecurityEnabled: boolv(g.SecurityEnabled),
		GroupTypes: g.GroupTypes, Visibility: g.Visibility, MembershipRule: g.MembershipRule, CreatedDateTime: g.CreatedDateTime}
	if out.GroupTypes == nil {
		out.GroupTypes = []string{}
	}
	return out
}

// page is one page of a collection or a delta round.
type page[T any] struct {
	Value     []T    `json:"value"`
	NextLink  string `json:"@odata.nextLink"`
	DeltaLink string `json:"@odata.deltaLink"`
}

// getPage GETs u through the paced transport and decodes a 2xx page; other
// statuses become an *Error as on the SDK's path (ErrDeltaExpired for a 410
// or syncStateNotFound, and so on).
func getPage[T any](ctx context.Context, c *Client, op, u string) (*page[T], error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &Error{Op: op, Message: err.Error(), err: err}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fromSDK(op, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, c.responseError(op, resp)
	}
	var p page[T]
	body := io.LimitReader(resp.Body, c.limits.pageBytes+1) // the transport caps it too
	if err := json.NewDecoder(body).Decode(&p); err != nil {
		return nil, readError(op, "unreadable page", err)
	}
	return &p, nil
}

// eachPage walks a paged read from u, handing each page to fn in order, and
// returns the last page's deltaLink (delta: a page must carry a nextLink or
// a deltaLink; otherwise the walk ends on the first page without a
// nextLink). The next page is requested while fn handles this one (a
// round's fn may wait on JetStream), so that a walk costs Graph's latency
// rather than Graph's plus ours; two pages are held at most, and the
// transport's per-tenant cap bounds the requests in flight. A failed fn
// cancels the request ahead.
func eachPage[T any](ctx context.Context, c *Client, op, u string, delta bool, fn func(*page[T]) error) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type fetched struct {
		p    *page[T]
		err  error
		span trace.Span // the page's: its request and its handling
	}
	pages := 0
	get := func(u string) <-chan fetched {
		ch := make(chan fetched, 1)
		pages++
		pctx, span := pageSpan(ctx, op, pages)
		go func() {
			defer func() {
				if v := recover(); v != nil {
					ch <- fetched{err: &Error{Op: op, Message: fmt.Sprintf("reading a page panicked: %v", v)}, span: span}
				}
			}()
			p, err := getPage[T](pctx, c, op, u)
			ch <- fetched{p, err, span}
		}()
		return ch
	}
	var next <-chan fetched
	defer func() {
		if next != nil { // a page read ahead that will not be handled
			cancel()
			f := <-next
			f.span.End()
		}
	}()
	w := c.walk(op, u)
	next = get(u)
	for {
		f := <-next
		next = nil
		link, done, err := func() (string, bool, error) {
			defer f.span.End()
			if f.err != nil {
				f.span.SetStatus(codes.Error, "page not read")
				return "", true, f.err
			}
			f.span.SetAttributes(attrPageItems.Int(len(f.p.Value)))
			switch p := f.p; {
			case p.NextLink != "":
				if err := w.next(p.NextLink); err != nil {
					return "", true, err
				}
				next = get(p.NextLink)
			case delta && p.DeltaLink == "":
				return "", true, &Error{Op: op, Message: "the last page carries neither a nextLink nor a deltaLink"}
			}
			if err := fn(f.p); err != nil {
				f.span.SetStatus(codes.Error, "page not handled")
				return "", true, err
			}
			return f.p.DeltaLink, next == nil, nil
		}()
		if done || err != nil {
			return link, err
		}
	}
}

// responseError reads an error answer (its body capped) into an *Error.
func (c *Client) responseError(op string, resp *http.Response) *Error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, c.limits.errorBytes))
	e := graphError(op, resp.StatusCode, raw, resp.Header.Get("Retry-After"))
	e.RequestID, e.ClientRequestID = resp.Header.Get("request-id"), resp.Header.Get("client-request-id")
	if e.ClientRequestID == "" && resp.Request != nil {
		e.ClientRequestID = resp.Request.Header.Get("client-request-id")
	}
	return e
}

// readError is a failed read of a response body for op; a body over its
// cap keeps its ErrBadResponse.
func readError(op, what string, err error) *Error {
	var ge *Error
	if errors.As(err, &ge) {
		cp := *ge
		cp.Op = op
		return &cp
	}
	return &Error{Op: op, Message: what + ": " + err.Error(), err: err}
}

// ListUsers pages through /users (999 a page) with an optional $filter,
// handing each page to fn. Used to read a tenant in parallel segments.
func (c *Client) ListUsers(ctx context.Context, filter string, fn func([]User) error) error {
	q := url.Values{"$select": {strings.Join(UserSelect, ",")}, "$top": {"999"}}
	if filter != "" {
		q.Set("$filter", filter)
	}
	_, err := eachPage(ctx, c, "list users", c.graphURL+"/users?"+q.Encode(), false, func(p *page[userJSON]) error {
		recs := make([]User, 0, len(p.Value))
		for i := range p.Value {
			recs = append(recs, p.Value[i].record())
		}
		return fn(recs)
	})
	return err
}

// UserDelta runs one user delta round. link is the deltaLink of the last
// round ("" starts a full round, "latest" takes a tracking point without
// data). Pages go to fn as they arrive; the new deltaLink is returned. An
// expired or reset token gives an error matching ErrDeltaExpired: start a
// full round. So does a link that is not https on the instance's Graph
// host (OwnsLink), which is never requested; the error also matches
// ErrForeignHost.
func (c *Client) UserDelta(ctx context.Context, link string, fn DeltaPage[UserChange]) (string, error) {
	u, err := c.deltaURL("user delta", "users", link, UserSelect)
	if err != nil {
		return "", err
	}
	return eachPage(ctx, c, "user delta", u, true, func(p *page[userJSON]) error {
		changes := make([]UserChange, 0, len(p.Value))
		for i := range p.Value {
			uj := &p.Value[i]
			ch := UserChange{ID: uj.ID}
			if uj.Removed != nil {
				ch.Removed = uj.Removed.reason()
			} else {
				rec := uj.record()
				ch.User = &rec
			}
			changes = append(changes, ch)
		}
		return fn(changes)
	})
}

// GroupDelta runs one group delta round with members, like UserDelta. A
// group split across entries or pages is merged; fn receives each page's
// groups once the page is read, and a group continued on a later page is
// sent again with the rest of its members (apply idempotently).
func (c *Client) GroupDelta(ctx context.Context, link string, fn DeltaPage[GroupChange]) (string, error) {
	u, err := c.deltaURL("group delta", "groups", link, groupDeltaSelect())
	if err != nil {
		return "", err
	}
	return eachPage(ctx, c, "group delta", u, true, groupPages(fn))
}

// GroupDeltaOf reads the groups ids names, with all their members, by a
// group delta filtered on their ids (a chunk from DeltaIDChunks), handing
// the pages to fn as GroupDelta does. Its deltaLink is not returned: a
// round follows changes from the tracking point it took first.
func (c *Client) GroupDeltaOf(ctx context.Context, ids []string, fn DeltaPage[GroupChange]) error {
	if len(ids) == 0 {
		return nil
	}
	q := url.Values{"$select": {strings.Join(groupDeltaSelect(), ",")}, "$filter": {idFilter(ids)}}
	_, err := eachPage(ctx, c, "group delta", c.graphURL+"/groups/delta?"+q.Encode(), true, groupPages(fn))
	return err
}

func groupDeltaSelect() []string { return append(append([]string{}, GroupSelect...), "members") }

// idFilter is the $filter that selects ids on a delta.
func idFilter(ids []string) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteString(" or ")
		}
		b.WriteString("id eq '" + strings.ReplaceAll(id, "'", "''") + "'")
	}
	return b.String()
}

// A delta's id filter takes at most 50 ids; Graph bounds the whole URL
// too, so a chunk's filter is also kept within maxIDFilter characters
// (encoded), which leaves a 2,048-character URL room for the rest.
const (
	maxDeltaIDs = 50
	maxIDFilter = 1600
)

// DeltaIDChunks splits ids into chunks that GroupDeltaOf takes in one
// request.
func DeltaIDChunks(ids []string) [][]string {
	var out [][]string
	start, size := 0, 0
	for i, id := range ids {
		// "id eq '…' or " as url.Values encodes it: id+eq+%27…%27+or+
		n := len(url.QueryEscape(id)) + 16
		if i > start && (i-start == maxDeltaIDs || size+n > maxIDFilter) {
			out = append(out, ids[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(ids) {
		out = append(out, ids[start:])
	}
	return out
}

// ListGroupIDs pages through /groups for their ids only (999 a page),
// handing each page's ids to fn.
func (c *Client) ListGroupIDs(ctx context.Context, fn func([]string) error) error {
	type idJSON struct {
		ID string `json:"id"`
	}
	_, err := eachPage(ctx, c, "list groups", c.graphURL+"/groups?$select=id&$top=999", false, func(p *page[idJSON]) error {
		ids := make([]string, 0, len(p.Value))
		for _, g := range p.Value {
			if g.ID != "" {
				ids = append(ids, g.ID)
			}
		}
		return fn(ids)
	})
	return err
}

// groupPages turns group delta pages into GroupChanges for fn, merging the
// entries of a group split within a page.
func groupPages(fn DeltaPage[GroupChange]) func(p *page[groupJSON]) error {
	return func(p *page[groupJSON]) error {
		byID := map[string]*GroupChange{}
		var order []string
		for i := range p.Value {
			g := &p.Value[i]
			ch := byID[g.ID]
			if ch == nil {
				ch = &GroupChange{ID: g.ID, Partial: true}
				byID[g.ID] = ch
				order = append(order, g.ID)
			}
			if g.Removed != nil {
				ch.Removed, ch.Group = g.Removed.reason(), nil
				continue
			}
			if g.DisplayName != nil {
				rec := g.record()
				ch.Group, ch.Partial = &rec, false
			}
			for _, m := range g.MembersDelta {
				if len(m.Removed) > 0 && string(m.Removed) != "null" {
					ch.MembersRemoved = append(ch.MembersRemoved, m.ID)
				} else {
					ch.MembersAdded = append(ch.MembersAdded, m.ID)
				}
			}
		}
		changes := make([]GroupChange, 0, len(order))
		for _, id := range order {
			changes = append(changes, *byID[id])
		}
		return fn(changes)
	}
}
