// Command etcd is the etcd server, built from the same module graph as
// kube-apiserver so both come from the Go module proxy at pinned versions.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
