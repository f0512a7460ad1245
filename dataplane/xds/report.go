package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// Issue is a service, or a whole resource, that a translation could not program as the control
// plane asked.
type Issue struct {
	Service  string `json:"service,omitempty"` // VIP:port; empty for a resource none of whose services could be read
	Resource string `json:"resource"`          // the listener chain (or route) it came from
	Reason   string `json:"reason"`
	// Kept: the service stays programmed as it was before the update that broke it, as Envoy
	// keeps the last good version of a rejected resource.
	Kept bool `json:"kept_previous,omitempty"`
}

// Report says what the last translation could not do as asked.
type Report struct {
	// Rejected services are not programmed (or kept as they were): the update is NACKed.
	Rejected []Issue `json:"rejected"`
	// NeedsWaypoint services are programmed, balanced by their catch-all route, but other routes
	// of theirs (by path or header) go to other clusters: only an L7 waypoint can honour those.
	NeedsWaypoint []Issue `json:"needs_waypoint"`
}

// RejectedError is what Translate returns when some services could not be programmed: the
// config it returns beside it holds every other service and is meant to be applied (partial
// acceptance), while the update is NACKed with this error's message.
type RejectedError struct {
	Issues []Issue
	Of     int // services the update asked for
}

func (e *RejectedError) Error() string {
	const show = 5
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d services not programmed: ", len(e.Issues), e.Of)
	for i, is := range e.Issues[:min(show, len(e.Issues))] {
		if i > 0 {
			b.WriteString("; ")
		}
		if is.Service != "" && !strings.Contains(is.Reason, is.Service) {
			b.WriteString(is.Service + ": ")
		}
		b.WriteString(is.Reason)
		if is.Kept {
			b.WriteString(" (previous version kept)")
		}
	}
	if len(e.Issues) > show {
		fmt.Fprintf(&b, "; and %d more", len(e.Issues)-show)
	}
	return b.String()
}

// issues is a Translator's record of the last translation's issues, by service, so that an
// update of a few services replaces just theirs.
type issues struct {
	rejected  map[model.Key]Issue
	waypoint  map[model.Key]Issue
	resources []Issue // whole resources that gave no service
}

func newIssues() *issues {
	return &issues{rejected: map[model.Key]Issue{}, waypoint: map[model.Key]Issue{}}
}

func (is *issues) clone() *issues {
	return &issues{rejected: maps.Clone(is.rejected), waypoint: maps.Clone(is.waypoint), resources: slices.Clone(is.resources)}
}

func (is *issues) clear(k model.Key) {
	delete(is.rejected, k)
	delete(is.waypoint, k)
}

func sortedIssues(m map[model.Key]Issue) []Issue {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b Issue) int { return strings.Compare(a.Service+a.Resource, b.Service+b.Resource) })
	return out
}

func (is *issues) report() Report {
	r := Report{Rejected: append(slices.Clone(is.resources), sortedIssues(is.rejected)...), NeedsWaypoint: sortedIssues(is.waypoint)}
	if r.Rejected == nil {
		r.Rejected = []Issue{}
	}
	if r.NeedsWaypoint == nil {
		r.NeedsWaypoint = []Issue{}
	}
	return r
}

// err is the RejectedError for the given keys' rejections (all of them when keys is nil), or nil.
func (is *issues) err(keys []model.Key, of int) error {
	var out []Issue
	if keys == nil {
		out = is.report().Rejected
	} else {
		for _, k := range keys {
			if i, ok := is.rejected[k]; ok {
				out = append(out, i)
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.SortFunc(out, func(a, b Issue) int { return strings.Compare(a.Service+a.Resource, b.Service+b.Resource) })
	return &RejectedError{Issues: out, Of: of}
}
