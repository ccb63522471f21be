// The test node's probe: one connection attempt, judged by what comes back.
//
//	probe tcp HOST:PORT   exit 0 when a TCP connection is made
//	probe udp HOST:PORT   exit 0 when the datagram sent is echoed back
//
// Exit 1 when blocked (refused, unreachable, or no answer within the timeout), 2 on bad usage.
// Debian's busybox nc has neither -z nor -u, hence this (built by the test node, packed into
// the probe image by tests/cluster/images.py).
package main

import (
	"fmt"
	"net"
	"os"
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

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "tcp" && os.Args[1] != "udp") {
		fmt.Fprintln(os.Stderr, "usage: probe tcp|udp HOST:PORT")
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
