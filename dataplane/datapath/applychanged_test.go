package datapath

import (
	"reflect"
	"testing"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// TestApplyChangedDiffsOnlyTheListedServices: ApplyChanged programs the same maps with the
// same operations as Apply when told what changed, and looks at nothing else.
func TestApplyChangedDiffsOnlyTheListedServices(t *testing.T) {
	p := loadDatapath(t, testOptions).Programmer
	a := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1), ep("10.0.0.3:8080", 1)})
	b := svc("10.96.0.2:443", model.RoundRobin, []model.Endpoint{ep("10.0.0.4:8443", 3), ep("10.0.0.5:8443", 1)})
	c := svc("[fd00:96::3]:80", model.Random, []model.Endpoint{ep("[fd00:10::1]:80", 1)})
	aShrunk := a
	aShrunk.Priorities = [][]model.Endpoint{{ep("10.0.0.1:8080", 1), ep("10.0.0.3:8080", 1)}}
	bMoved := b
	bMoved.Priorities = [][]model.Endpoint{{ep("10.0.0.9:8443", 1)}}

	for _, step := range []struct {
		name    string
		cfg     model.Config
		changed []model.Key
		want    ApplyStats
		maps    model.Config // what the maps hold after it
	}{
		{"all listed: empty maps get them", config(a, b), []model.Key{a.Key, b.Key},
			ApplyStats{ServicesAdded: 2, MapUpdates: nslots(config(a, b), a.Key, b.Key) + 2}, config(a, b)},
		{"one changed", config(aShrunk, b), []model.Key{a.Key},
			ApplyStats{ServicesChanged: 1, MapUpdates: nslots(config(aShrunk), a.Key) + 1, MapDeletes: nslots(config(a), a.Key)}, config(aShrunk, b)},
		{"one added, one removed, a key listed twice", config(aShrunk, c), []model.Key{c.Key, b.Key, c.Key},
			ApplyStats{ServicesAdded: 1, ServicesRemoved: 1, MapUpdates: nslots(config(c), c.Key) + 1 + 1, MapDeletes: 1 + nslots(config(b), b.Key)}, config(aShrunk, c)},
		{"a listed service that did not change touches nothing", config(aShrunk, c), []model.Key{a.Key}, ApplyStats{}, config(aShrunk, c)},
		// Not listed, so not looked at: the caller's promise is what makes it cheap.
		{"an unlisted difference is left alone", config(aShrunk, c, bMoved), []model.Key{}, ApplyStats{}, config(aShrunk, c)},
		{"nil: everything is diffed", config(aShrunk, c, bMoved), nil,
			ApplyStats{ServicesAdded: 1, MapUpdates: nslots(config(bMoved), b.Key) + 1}, config(aShrunk, c, bMoved)},
	} {
		t.Run(step.name, func(t *testing.T) {
			st, err := p.ApplyChanged(step.cfg, step.changed)
			if err != nil {
				t.Fatal(err)
			}
			if st != step.want {
				t.Errorf("ApplyChanged = %+v, want %+v", st, step.want)
			}
			if got, want := kernelServices(t, p), expected(step.maps); !reflect.DeepEqual(got, want) {
				t.Errorf("maps hold\n%v\nwant\n%v", got, want)
			}
		})
	}
}

// TestApplyChangedRejectsAnInvalidListedService: validation and fit checks are Apply's.
func TestApplyChangedRejectsAnInvalidListedService(t *testing.T) {
	p := loadDatapath(t, testOptions).Programmer
	a := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1)})
	if _, err := p.ApplyChanged(config(a), []model.Key{a.Key}); err != nil {
		t.Fatal(err)
	}
	bad := a
	bad.Priorities = [][]model.Endpoint{{ep("10.0.0.1:8080", 0)}}
	if _, err := p.ApplyChanged(config(bad), []model.Key{a.Key}); err == nil {
		t.Fatal("ApplyChanged accepted an endpoint of weight 0")
	}
	if got, want := kernelServices(t, p), expected(config(a)); !reflect.DeepEqual(got, want) {
		t.Errorf("maps hold\n%v\nwant\n%v", got, want)
	}
}
