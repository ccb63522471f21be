// The sandbox ("pause") process of the test node's pods: it holds the pod's namespaces open,
// reaps orphaned children, and exits at once on SIGTERM or SIGINT, so pods stop without
// waiting out a kill timeout. No registry is reachable here, so the node cannot pull the
// usual pause image; this is built from source and packed by tests/cluster/images.py.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for received := range signals {
		if received == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
