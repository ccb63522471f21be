// The test node's probe: one connection attempt, judged by what comes back.
//
//	probe tcp HOST:PORT   exit 0 when a TCP connection is made
//	probe udp HOST:PORT   exit 0 when the datagram sent is echoed back
//	probe watch tcp|udp HOST:PORT SECONDS
//	                      from its first instant, try again and again for SECONDS and print one
//	                      line: attempts, how many got through, and when the first and last did
//	                      (milliseconds since start); then sleep, so the pod stays for its logs.
//	                      A line "started" comes first, at once, for the log's timestamp
//	probe flood HOST:PORT[,HOST:PORT...] WORKERS MAX SECONDS
//	                      WORKERS connections per address at once, each closed and made again
//	                      (a pause of 10 ms between), at most MAX in all, for SECONDS; prints
//	                      "flooding" at once and "flood connections=N failed=M" at the end,
//	                      then sleeps. MAX keeps the host's conntrack table far from full
//
// Exit 1 when blocked (refused, unreachable, or no answer within the timeout), 2 on bad usage.
// Debian's busybox nc has neither -z nor -u, hence this (built by the test node, packed into
// the probe image by tests/cluster/images.py).
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const timeout = 2 * time.Second

func tcp(address string) error {
	connection, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return err
	}
	return connection.Close()
}

func udp(address string) error {
	connection, err := net.DialTimeout("udp", address, timeout)
	if err != nil {
		return err
	}
	defer connection.Close()
	if err := connection.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	sent := []byte("sortie-probe")
	if _, err := connection.Write(sent); err != nil {
		return err
	}
	reply := make([]byte, 64)
	count, err := connection.Read(reply)
	if err != nil {
		return err
	}
	if string(reply[:count]) != string(sent) {
		return fmt.Errorf("unexpected reply %q", reply[:count])
	}
	return nil
}

func watch(check func(string) error, address string, seconds float64) {
	started := time.Now()
	fmt.Println("started") // the container's first instant, for a log timestamp (bench/startup.py)
	attempts, open := 0, 0
	first, last := int64(-1), int64(-1)
	for time.Since(started).Seconds() < seconds {
		attempts++
		if check(address) == nil {
			elapsed := time.Since(started).Milliseconds()
			open++
			if first < 0 {
				first = elapsed
			}
			last = elapsed
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("attempts=%d open=%d first_open_ms=%d last_open_ms=%d\n", attempts, open, first, last)
	for {
		time.Sleep(time.Hour)
	}
}

func flood(addresses []string, workers int, limit int64, seconds float64) {
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var made, failed, dialled atomic.Int64
	var group sync.WaitGroup
	fmt.Println("flooding")
	for _, address := range addresses {
		for i := 0; i < workers; i++ {
			group.Add(1)
			go func(address string) {
				defer group.Done()
				for time.Now().Before(deadline) && dialled.Add(1) <= limit {
					connection, err := net.DialTimeout("tcp", address, timeout)
					if err != nil {
						failed.Add(1)
					} else {
						made.Add(1)
						connection.Close()
					}
					time.Sleep(10 * time.Millisecond)
				}
			}(address)
		}
	}
	group.Wait()
	fmt.Printf("flood connections=%d failed=%d\n", made.Load(), failed.Load())
	for {
		time.Sleep(time.Hour)
	}
}

func main() {
	if len(os.Args) == 6 && os.Args[1] == "flood" {
		var workers int
		var limit int64
		var seconds float64
		_, errWorkers := fmt.Sscanf(os.Args[3], "%d", &workers)
		_, errLimit := fmt.Sscanf(os.Args[4], "%d", &limit)
		_, errSeconds := fmt.Sscanf(os.Args[5], "%g", &seconds)
		if errWorkers == nil && errLimit == nil && errSeconds == nil && workers > 0 {
			flood(strings.Split(os.Args[2], ","), workers, limit, seconds)
		}
	}
	if len(os.Args) == 5 && os.Args[1] == "watch" {
		var seconds float64
		if _, err := fmt.Sscanf(os.Args[4], "%g", &seconds); err == nil && (os.Args[2] == "tcp" || os.Args[2] == "udp") {
			check := tcp
			if os.Args[2] == "udp" {
				check = udp
			}
			watch(check, os.Args[3], seconds)
		}
	}
	if len(os.Args) != 3 || (os.Args[1] != "tcp" && os.Args[1] != "udp") {
		fmt.Fprintln(os.Stderr, "usage: probe tcp|udp HOST:PORT | probe watch tcp|udp HOST:PORT SECONDS | "+
			"probe flood HOST:PORT[,...] WORKERS MAX SECONDS")
		os.Exit(2)
	}
	check := tcp
	if os.Args[1] == "udp" {
		check = udp
	}
	if err := check(os.Args[2]); err != nil {
		fmt.Println("blocked:", err)
		os.Exit(1)
	}
	fmt.Println("open")
}
