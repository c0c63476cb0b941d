// etcd server, as go.etcd.io/etcd/server/v3's own main.go (Apache-2.0, The etcd Authors):
// built from the same go.etcd.io/etcd/server/v3 release k8s.io/kubernetes already requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
