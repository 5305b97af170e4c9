// CoreDNS with only the plugins the local cluster's DNS uses: the full build links every cloud
// provider's SDK and takes several times as long on a 2-core machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The same relative order as CoreDNS's own plugin.cfg, which decides the order a query passes
// through the plugins of a server block.
func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "health", "ready", "log", "errors", "cache", "kubernetes", "forward",
	}
}

func main() {
	coremain.Run()
}
