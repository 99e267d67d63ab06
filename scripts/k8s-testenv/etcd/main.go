// Command etcd is the etcd server, built from the Go module proxy for the Kubernetes test
// environment (scripts/k8s-testenv.sh): the same entry point as etcd's own server binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
