// Command etcd is the etcd server, built from the published go.etcd.io/etcd/server/v3 module.
//
// A wrapper main is needed because `go install go.etcd.io/etcd/server/v3@vX` fails on the replace
// directives in etcd's own go.mod; requiring the server module from this small module avoids them.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
