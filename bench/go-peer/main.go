// Command go-peer is the Go side of the benchmark in bench/: one controller on
// sigs.k8s.io/multicluster-runtime that reconciles every labelled ConfigMap of a
// fleet, reading each through its cluster's cached client.
//
// Its clusters come from a directory of kubeconfigs (providers/clusters), from
// kubeconfig Secrets (providers/kubeconfig, P4) or from the namespaces of one
// cluster (providers/namespace, P6). It takes the same arguments as the Rust peers
// (see bench/README.md), reports when every expected object has been reconciled
// once, then measures write→reconcile latency of the updates the driver makes, and
// prints one JSON line of results.
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
	"k8s.io/client-go/rest"
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
	"sigs.k8s.io/multicluster-runtime/providers/kubeconfig"
	"sigs.k8s.io/multicluster-runtime/providers/namespace"
)

// writtenAt is the annotation the driver sets on every update: the write time in
// Unix nanoseconds.
const writtenAt = "bench.multicluster-runtime.rs/written-at"

type options struct {
	kubeconfigs         string
	expected            int
	selector            string
	concurrency         int
	updates             int
	readyFile           string
	timeout             time.Duration
	kubeconfigSecrets   string
	namespacesAsCluster string
	reconcileSleep      time.Duration
	readyAfter          int
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
	Engaged        int     `json:"engaged"`
	EngageP50Ms    float64 `json:"engage_p50_ms"`
	EngageMaxMs    float64 `json:"engage_max_ms"`
	Complete       bool    `json:"complete"`
}

// tally counts distinct reconciled objects, the latency of each observed update and
// the first reconcile in each cluster. An update counts once per object and stamp:
// a reconcile that sees a stamp no newer than the last one counted for that object
// adds no sample.
type tally struct {
	mu        sync.Mutex
	start     time.Time
	expected  int
	updates   int
	lastStamp map[string]int64     // per object key, the newest stamp counted (0: none)
	firstIn   map[string]time.Time // per cluster, its first reconcile
	latencies []time.Duration
	allSeenAt time.Time
	want      int           // how many distinct objects waitSeen waits for
	reached   chan struct{} // closed when the count reaches want, then replaced
	allUpd    chan struct{}
}

func (t *tally) record(cluster, namespace, name string, cm *corev1.ConfigMap) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.firstIn[cluster]; !ok {
		t.firstIn[cluster] = now
	}
	key := cluster + "/" + namespace + "/" + name
	last, known := t.lastStamp[key]
	if !known {
		t.lastStamp[key] = 0
		if len(t.lastStamp) == t.expected {
			t.allSeenAt = now
		}
		// One wake-up when the count waited for is reached, not one per object:
		// as the Rust peers' tally does.
		if len(t.lastStamp) == t.want {
			close(t.reached)
			t.reached = make(chan struct{})
		}
	}
	stamp, err := strconv.ParseInt(cm.Annotations[writtenAt], 10, 64)
	if err != nil || stamp < t.start.UnixNano() || t.updates == 0 || stamp <= last {
		return
	}
	t.lastStamp[key] = stamp
	t.latencies = append(t.latencies, now.Sub(time.Unix(0, stamp)))
	if len(t.latencies) == t.updates {
		close(t.allUpd)
	}
}

// waitSeen waits until at least n distinct objects were seen.
func (t *tally) waitSeen(ctx context.Context, n int) error {
	t.mu.Lock()
	if len(t.lastStamp) >= n {
		t.mu.Unlock()
		return nil
	}
	t.want = n
	reached := t.reached
	t.mu.Unlock()
	select {
	case <-reached:
		return nil
	case <-ctx.Done():
		t.mu.Lock()
		seen := len(t.lastStamp)
		t.mu.Unlock()
		return fmt.Errorf("timed out with %d of %d objects reconciled", seen, n)
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
	flag.StringVar(&o.kubeconfigSecrets, "kubeconfig-secrets", "", "clusters from the kubeconfig Secrets of this namespace of the first kubeconfig's cluster (P4)")
	flag.StringVar(&o.namespacesAsCluster, "namespaces-as-clusters", "", "shared: the namespaces of the first kubeconfig's cluster as clusters (P6)")
	flag.DurationVar(&o.reconcileSleep, "reconcile-sleep", 0, "artificial cost of each reconcile (P5)")
	flag.IntVar(&o.readyAfter, "ready-after", -1, "create the ready file once this many objects are reconciled (default: all)")
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
	hostCfg, err := clientcmd.BuildConfigFromFlags("", paths[0])
	if err != nil {
		return nil, err
	}
	noEndpoints := manager.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	}
	configMaps := map[client.Object]cache.ByObject{&corev1.ConfigMap{}: {Label: sel}}

	var mgr mcmanager.Manager
	// ready, if set, returns once the provider is ready to be measured (P4).
	var ready func(context.Context) error
	switch {
	case o.namespacesAsCluster != "":
		mgr, err = namespaceManager(hostCfg, noEndpoints, configMaps)
	case o.kubeconfigSecrets != "":
		mgr, ready, err = secretManager(ctx, hostCfg, noEndpoints, configMaps, o.kubeconfigSecrets)
	default:
		mgr, err = fleetManager(ctx, paths, hostCfg, noEndpoints, configMaps)
	}
	if err != nil {
		return nil, err
	}

	t := &tally{
		start:     start,
		expected:  o.expected,
		updates:   o.updates,
		lastStamp: make(map[string]int64, o.expected),
		firstIn:   map[string]time.Time{},
		reached:   make(chan struct{}),
		allUpd:    make(chan struct{}),
	}
	err = mcbuilder.ControllerManagedBy(mgr).
		Named("bench-configmaps").
		For(&corev1.ConfigMap{}).
		WithOptions(controller.TypedOptions[mcreconcile.Request]{MaxConcurrentReconciles: o.concurrency}).
		Complete(mcreconcile.Func(func(ctx context.Context, req mcreconcile.Request) (ctrl.Result, error) {
			if o.reconcileSleep > 0 {
				time.Sleep(o.reconcileSleep)
			}
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
			t.record(string(req.ClusterName), req.Namespace, req.Name, cm)
			return ctrl.Result{}, nil
		}))
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}

	// The manager starts the provider itself (when it is a ProviderRunnable).
	failed := make(chan error, 1)
	go func() { failed <- mgr.Start(ctx) }()
	go func() {
		// A manager that stops early ends the run.
		if err := <-failed; err != nil {
			fmt.Fprintln(os.Stderr, "go-peer: manager stopped:", err)
		}
		cancel()
	}()

	res := &result{Peer: "go", Clusters: len(paths), Objects: o.expected, Updates: o.updates}
	if ready != nil {
		if err := ready(ctx); err != nil {
			return res, err
		}
	}
	readyAfter := o.readyAfter
	if readyAfter < 0 || readyAfter > o.expected {
		readyAfter = o.expected
	}
	if err := t.waitSeen(ctx, readyAfter); err != nil {
		return res, err
	}
	if o.readyFile != "" {
		if err := os.WriteFile(o.readyFile, nil, 0o644); err != nil {
			return res, err
		}
	}
	if err := t.waitSeen(ctx, o.expected); err != nil {
		return res, err
	}
	t.mu.Lock()
	res.TimeToAllS = t.allSeenAt.Sub(start).Seconds()
	t.mu.Unlock()
	res.VmHWMSyncedKiB = vmHWM()
	if o.updates > 0 {
		select {
		case <-t.allUpd:
		case <-ctx.Done():
		}
	}
	t.mu.Lock()
	lat := append([]time.Duration(nil), t.latencies...)
	firsts := make(map[string]time.Time, len(t.firstIn))
	for name, at := range t.firstIn {
		firsts[name] = at
	}
	t.mu.Unlock()
	res.UpdatesSeen = len(lat)
	res.LatP50Ms, res.LatP99Ms, res.LatMaxMs = percentiles(lat)
	res.VmHWMKiB = vmHWM()
	res.Complete = res.UpdatesSeen >= o.updates
	if !res.Complete {
		return res, fmt.Errorf("timed out with %d of %d updates seen", res.UpdatesSeen, o.updates)
	}
	reader := mgr.GetLocalManager().GetAPIReader()
	switch {
	case o.kubeconfigSecrets != "":
		engaged, err := engageLatencies(context.Background(), reader, o.kubeconfigSecrets, firsts)
		if err != nil {
			return res, err
		}
		res.Clusters = len(engaged)
		res.Engaged = len(engaged)
		res.EngageP50Ms, _, res.EngageMaxMs = percentiles(engaged)
	case o.namespacesAsCluster != "":
		// The provider engages every namespace, so count them.
		namespaces := &corev1.NamespaceList{}
		if err := reader.List(context.Background(), namespaces); err != nil {
			return res, err
		}
		res.Clusters = len(namespaces.Items)
	}
	return res, nil
}

// fleetManager is a manager over the fleet of kubeconfigs through the programmatic
// provider; the manager's own cluster is the first of the fleet.
func fleetManager(ctx context.Context, paths []string, hostCfg *rest.Config, opts manager.Options, byObject map[client.Object]cache.ByObject) (mcmanager.Manager, error) {
	provider := clusters.New()
	for _, path := range paths {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		cl, err := cluster.New(cfg, func(co *cluster.Options) { co.Cache.ByObject = byObject })
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		name := strings.TrimSuffix(filepath.Base(path), ".kubeconfig")
		if err := provider.Add(ctx, multicluster.ClusterName(name), cl); err != nil {
			return nil, err
		}
	}
	mgr, err := mcmanager.New(hostCfg, provider, opts)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	return mgr, nil
}

// namespaceManager is a manager whose clusters are the namespaces of its own
// cluster (providers/namespace), all sharing its cache: one watch of the labelled
// ConfigMaps of every namespace. The provider has no selector: it engages every
// namespace.
func namespaceManager(hostCfg *rest.Config, opts manager.Options, byObject map[client.Object]cache.ByObject) (mcmanager.Manager, error) {
	opts.Cache = cache.Options{ByObject: byObject}
	local, err := manager.New(hostCfg, opts)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	mgr, err := mcmanager.WithMultiCluster(local, namespace.New(local))
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	return mgr, nil
}

// secretManager is a manager whose clusters come from the kubeconfig Secrets of
// namespace ns of its own cluster (providers/kubeconfig). Its cache holds only those
// Secrets. The returned function waits until their informer has synced.
func secretManager(ctx context.Context, hostCfg *rest.Config, opts manager.Options, byObject map[client.Object]cache.ByObject, ns string) (mcmanager.Manager, func(context.Context) error, error) {
	opts.Cache = cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}: {
			Namespaces: map[string]cache.Config{ns: {}},
			Label:      labels.SelectorFromSet(labels.Set{kubeconfig.DefaultKubeconfigSecretLabel: "true"}),
		},
	}}
	provider := kubeconfig.New(kubeconfig.Options{
		Namespace:      ns,
		ClusterOptions: []cluster.Option{func(co *cluster.Options) { co.Cache.ByObject = byObject }},
	})
	mgr, err := mcmanager.New(hostCfg, provider, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("manager: %w", err)
	}
	if err := provider.SetupWithManager(ctx, mgr); err != nil {
		return nil, nil, fmt.Errorf("kubeconfig provider: %w", err)
	}
	ready := func(ctx context.Context) error {
		informer, err := mgr.GetLocalManager().GetCache().GetInformer(ctx, &corev1.Secret{})
		if err != nil {
			return fmt.Errorf("the Secret informer: %w", err)
		}
		for !informer.HasSynced() {
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return fmt.Errorf("the Secret informer did not sync")
			}
		}
		return nil
	}
	return mgr, ready, nil
}

// engageLatencies gives, per kubeconfig Secret of ns with the driver's stamp and a
// reconcile in its cluster, the time from the stamp to that cluster's first
// reconcile.
func engageLatencies(ctx context.Context, reader client.Reader, ns string, firsts map[string]time.Time) ([]time.Duration, error) {
	secrets := &corev1.SecretList{}
	if err := reader.List(ctx, secrets, client.InNamespace(ns),
		client.MatchingLabels{kubeconfig.DefaultKubeconfigSecretLabel: "true"}); err != nil {
		return nil, fmt.Errorf("listing the kubeconfig Secrets: %w", err)
	}
	var out []time.Duration
	for _, secret := range secrets.Items {
		stamp, err := strconv.ParseInt(secret.Annotations[writtenAt], 10, 64)
		first, ok := firsts[secret.Name]
		if err != nil || !ok {
			continue
		}
		out = append(out, first.Sub(time.Unix(0, stamp)))
	}
	return out, nil
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
