package console

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
)

// watcherWith is a watcher holding n synthetic failure records.
func watcherWith(n int) *watcher {
	w := &watcher{failBySeq: map[uint64]*failureView{}, failByJob: map[string][]*failureView{}}
	codes := []string{"user_not_found", "no_free_seat", "sku_not_found", "group_not_found", "throttled_out", "usage_location_missing"}
	start := time.Now().Add(-7 * 24 * time.Hour)
	for i := range n {
		r := jobs.FailureRecord{JobID: fmt.Sprintf("job-%06d", i), Instance: fmt.Sprintf("tenant-%04d", i%2000), Action: "microsoft-365.assign_license",
			FailedAt: start.Add(time.Duration(i) * 6 * time.Second), Error: jobs.Error{Code: codes[i%len(codes)], Message: fmt.Sprintf("record %d of user%d@contoso.com", i, i)}}
		v := &failureView{Seq: uint64(i + 1), Rec: r, lower: strings.ToLower(r.JobID + " " + r.Error.Message)}
		w.failures = append(w.failures, v)
	}
	return w
}

// BenchmarkFailuresPage is one page of 100,000 records under each filter
// (the scan and the copy of the page's rows, not the rendering).
func BenchmarkFailuresPage(b *testing.B) {
	w := watcherWith(100_000)
	for _, q := range []string{"", "code=no_free_seat", "instance=tenant-0007&action=assign_license&since=3d", "q=record+99999", "page=200"} {
		v, _ := url.ParseQuery(q)
		f, err := parseFailureFilter(v, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		page, _ := pageOf(v, 0)
		b.Run("filter="+q, func(b *testing.B) {
			for b.Loop() {
				w.page(f, (page-1)*pageSize)
			}
		})
	}
}
