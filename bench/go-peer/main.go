// Command go-peer is the Go side of the benchmark in bench/: one controller on
// sigs.k8s.io/multicluster-runtime that reconciles every labelled ConfigMap of a
// fleet, reading each through its cluster's cached client.
//
// It takes the same arguments as the Rust peers (see bench/README.md), reports when
// every expected object has been reconciled once, then measures write→reconcile
// latency of the updates the driver makes, and prints one JSON line of results.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mcbuilder "sigs.k8s.io/multicluster-runtime/pkg/builder"
	mcmanager "sigs.k8s.io/multicluster-runtime/pkg/manager"
	"sigs.k8s.io/multicluster-runtime/pkg/multicluster"
	mcreconcile "sigs.k8s.io/multicluster-runtime/pkg/reconcile"
	"sigs.k8s.io/multicluster-runtime/providers/clusters"
)

// writtenAt is the annotation the driver sets on every update: the write time in
// Unix nanoseconds.
const writtenAt = "bench.multicluster-runtime.rs/written-at"

type options struct {
	kubeconfigs string
	expected    int
	selector    string
	concurrency int
	updates     int
	readyFile   string
	timeout     time.Duration
}

// result is the JSON line printed at the end; the Rust peers print the same fields.
type result struct {
	Peer           string  `json:"peer"`
	Clusters       int     `json:"clusters"`
	Objects        int     `json:"objects"`
	TimeToAllS     float64 `json:"time_to_all_s"`
	VmHWMSyncedKiB int64   `json:"vmhwm_synced_kib"`
	VmHWMKiB       int64   `json:"vmhwm_kib"`
	Updates        int     `json:"updates"`
	UpdatesSeen    int     `json:"updates_seen"`
	LatP50Ms       float64 `json:"lat_p50_ms"`
	LatP99Ms       float64 `json:"lat_p99_ms"`
	LatMaxMs       float64 `json:"lat_max_ms"`
	Complete       bool    `json:"complete"`
}

// tally counts distinct reconciled objects and the latency of each observed update.
type tally struct {
	mu        sync.Mutex
	start     time.Time
	expected  int
	updates   int
	seen      map[string]struct{}
	latencies []time.Duration
	allSeen   chan struct{}
	allUpd    chan struct{}
}

func (t *tally) record(key string, cm *corev1.ConfigMap) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.seen[key]; !ok {
		t.seen[key] = struct{}{}
		if len(t.seen) == t.expected {
			close(t.allSeen)
		}
	}
	stamp, err := strconv.ParseInt(cm.Annotations[writtenAt], 10, 64)
	if err != nil || stamp < t.start.UnixNano() || t.updates == 0 {
		return
	}
	t.latencies = append(t.latencies, now.Sub(time.Unix(0, stamp)))
	if len(t.latencies) == t.updates {
		close(t.allUpd)
	}
}

func main() {
	start := time.Now()
	var o options
	flag.StringVar(&o.kubeconfigs, "kubeconfigs", "", "directory of <cluster>.kubeconfig files")
	flag.IntVar(&o.expected, "expected", 0, "objects to reconcile across the fleet")
	flag.StringVar(&o.selector, "selector", "", "label selector of the ConfigMaps")
	flag.IntVar(&o.concurrency, "concurrency", 4, "concurrent reconciles")
	flag.IntVar(&o.updates, "updates", 0, "updates to wait for after the initial sync")
	flag.StringVar(&o.readyFile, "ready-file", "", "file created once every object is reconciled")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	res, err := run(start, o)
	if res != nil {
		line, _ := json.Marshal(res)
		fmt.Println(string(line))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-peer:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func run(start time.Time, o options) (*result, error) {
	ctrllog.SetLogger(logr.Discard())
	if o.kubeconfigs == "" || o.expected <= 0 {
		return nil, fmt.Errorf("--kubeconfigs and --expected are required")
	}
	sel, err := labels.Parse(o.selector)
	if err != nil {
		return nil, fmt.Errorf("--selector: %w", err)
	}
	paths, err := filepath.Glob(filepath.Join(o.kubeconfigs, "*.kubeconfig"))
	if err != nil || len(paths) == 0 {
		return nil, fmt.Errorf("no *.kubeconfig in %s", o.kubeconfigs)
	}
	sort.Strings(paths)
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	provider := clusters.New()
	for _, path := range paths {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		cl, err := cluster.New(cfg, func(co *cluster.Options) {
			co.Cache.ByObject = map[client.Object]cache.ByObject{
				&corev1.ConfigMap{}: {Label: sel},
			}
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		name := strings.TrimSuffix(filepath.Base(path), ".kubeconfig")
		if err := provider.Add(ctx, multicluster.ClusterName(name), cl); err != nil {
			return nil, err
		}
	}
	hostCfg, err := clientcmd.BuildConfigFromFlags("", paths[0])
	if err != nil {
		return nil, err
	}
	mgr, err := mcmanager.New(hostCfg, provider, manager.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}

	t := &tally{
		start:    start,
		expected: o.expected,
		updates:  o.updates,
		seen:     make(map[string]struct{}, o.expected),
		allSeen:  make(chan struct{}),
		allUpd:   make(chan struct{}),
	}
	err = mcbuilder.ControllerManagedBy(mgr).
		Named("bench-configmaps").
		For(&corev1.ConfigMap{}).
		WithOptions(controller.TypedOptions[mcreconcile.Request]{MaxConcurrentReconciles: o.concurrency}).
		Complete(mcreconcile.Func(func(ctx context.Context, req mcreconcile.Request) (ctrl.Result, error) {
			cl, err := mgr.GetCluster(ctx, req.ClusterName)
			if err != nil {
				return ctrl.Result{}, err
			}
			cm := &corev1.ConfigMap{}
			if err := cl.GetClient().Get(ctx, req.NamespacedName, cm); err != nil {
				if apierrors.IsNotFound(err) {
					return ctrl.Result{}, nil
				}
				return ctrl.Result{}, err
			}
			t.record(string(req.ClusterName)+"/"+req.Namespace+"/"+req.Name, cm)
			return ctrl.Result{}, nil
		}))
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}

	// The manager starts the provider itself (it is a ProviderRunnable).
	failed := make(chan error, 1)
	go func() { failed <- mgr.Start(ctx) }()

	res := &result{Peer: "go", Clusters: len(paths), Objects: o.expected, Updates: o.updates}
	select {
	case <-t.allSeen:
	case err := <-failed:
		return res, fmt.Errorf("manager stopped: %v", err)
	case <-ctx.Done():
		t.mu.Lock()
		seen := len(t.seen)
		t.mu.Unlock()
		return res, fmt.Errorf("timed out with %d of %d objects reconciled", seen, o.expected)
	}
	res.TimeToAllS = time.Since(start).Seconds()
	res.VmHWMSyncedKiB = vmHWM()
	if o.readyFile != "" {
		if err := os.WriteFile(o.readyFile, nil, 0o644); err != nil {
			return res, err
		}
	}
	if o.updates > 0 {
		select {
		case <-t.allUpd:
		case <-ctx.Done():
		}
	}
	t.mu.Lock()
	lat := append([]time.Duration(nil), t.latencies...)
	t.mu.Unlock()
	res.UpdatesSeen = len(lat)
	res.LatP50Ms, res.LatP99Ms, res.LatMaxMs = percentiles(lat)
	res.VmHWMKiB = vmHWM()
	res.Complete = res.UpdatesSeen >= o.updates
	if !res.Complete {
		return res, fmt.Errorf("timed out with %d of %d updates seen", res.UpdatesSeen, o.updates)
	}
	return res, nil
}

// percentiles gives p50, p99 and the maximum in milliseconds (nearest rank).
func percentiles(d []time.Duration) (p50, p99, max float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	rank := func(q float64) float64 {
		i := int(q*float64(len(d)) + 0.999999)
		if i < 1 {
			i = 1
		}
		if i > len(d) {
			i = len(d)
		}
		return ms(d[i-1])
	}
	return rank(0.50), rank(0.99), ms(d[len(d)-1])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// vmHWM reads the peak resident set size in KiB from /proc/self/status.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return v
		}
	}
	return 0
}
