package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/clusters"
)

// serverCounts reads every server pod's count of requests received, asking it from inside its
// own network namespace on loopback (no data plane between), keyed namespace/name.
func serverCounts(ctx context.Context, c clusters.Cluster) (map[string]int64, error) {
	out := map[string]int64{}
	for _, pod := range c.Pods() {
		if pod.Workload == nil || pod.Workload.Kind != "fortio-server" {
			continue
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return c.Dial(ctx, pod.Name, network, addr)
			},
		}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(loadgen.StatsPort))+"/requests", nil)
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("request count of %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		var st loadgen.ServerStats
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("request count of %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		out[pod.Namespace+"/"+pod.Name] = st.Echo
	}
	return out, nil
}

// routing is where the requests between two counts went: to the pods behind the run's service
// (namespace ns, label app=app) or elsewhere.
func routing(c clusters.Cluster, before, after map[string]int64, ns, app string) *bench.Routing {
	rt := &bench.Routing{}
	for _, pod := range c.Pods() {
		key := pod.Namespace + "/" + pod.Name
		n := after[key] - before[key]
		switch {
		case pod.Namespace == ns && pod.Labels["app"] == app:
			rt.Target += n
		case n != 0:
			if rt.Elsewhere == nil {
				rt.Elsewhere = map[string]int64{}
			}
			rt.Elsewhere[key] = n
		}
	}
	return rt
}
