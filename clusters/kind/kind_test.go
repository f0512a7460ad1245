package kind

import (
	"context"
	"errors"
	"strings"
	"testing"

	"sigs.k8s.io/kind/pkg/cluster"

	"github.com/onehop-mesh/onehop/clusters"
)

// Without a container engine (these machines), Up and Down say so and what to use instead,
// and create nothing.
func TestNoEngineSaysWhatToDo(t *testing.T) {
	if opt, err := cluster.DetectNodeProvider(); err == nil {
		if _, err := cluster.NewProvider(opt).List(); err == nil {
			t.Skip("a container engine answers here: kind would really run")
		}
	}
	p := &Provider{Source: "../.."}
	_, err := p.Up(context.Background(), clusters.Default())
	if !errors.Is(err, ErrNoEngine) || !strings.Contains(err.Error(), "localkube") {
		t.Errorf("Up without an engine: %v", err)
	}
	if err := p.Down(context.Background(), "lab"); !errors.Is(err, ErrNoEngine) {
		t.Errorf("Down without an engine: %v", err)
	}
}
