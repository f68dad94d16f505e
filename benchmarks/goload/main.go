// goload: a compiled gRPC load client for benchmarks/loadgen.py (--client go).
//
// The Python client shares the 2 cores with the server it measures, and it spends 2-6 ms
// of its own on every call at half load. This one sends requests that loadgen.py
// serialised beforehand and does not decode the replies (as a load tool that only counts
// them would), so what it measures is the server and gRPC's transport. It runs one phase
// and prints one JSON object: the calls started, each success's latency and the errors by
// status code, which loadgen.py checks and summarises exactly as its own phases.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// rawCodec passes serialised messages through: requests as loadgen.py wrote them, replies undecoded.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

type report struct {
	Started   int            `json:"started"`
	Latencies []float64      `json:"latencies_s"`
	Errors    map[string]int `json:"errors"`
	Elapsed   float64        `json:"elapsed_s"`
}

type tally struct {
	mu sync.Mutex
	report
}

func (t *tally) start() {
	t.mu.Lock()
	t.Started++
	t.mu.Unlock()
}

func (t *tally) record(latency time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.Errors[codeName(err)]++
	} else {
		t.Latencies = append(t.Latencies, latency.Seconds())
	}
}

// codeName spells a status code as Python's grpc.StatusCode does: DeadlineExceeded -> DEADLINE_EXCEEDED.
func codeName(err error) string {
	var name strings.Builder
	for i, r := range status.Code(err).String() {
		if i > 0 && unicode.IsUpper(r) {
			name.WriteByte('_')
		}
		name.WriteRune(unicode.ToUpper(r))
	}
	return name.String()
}

// readRequests reads serialised requests, each behind its length as a little-endian uint32.
func readRequests(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var requests [][]byte
	for len(data) > 0 {
		if len(data) < 4 {
			return nil, fmt.Errorf("%s: a length cut short at the end", path)
		}
		size := binary.LittleEndian.Uint32(data)
		if uint32(len(data)-4) < size {
			return nil, fmt.Errorf("%s: a request of %d bytes cut short at the end", path, size)
		}
		requests = append(requests, data[4:4+size])
		data = data[4+size:]
	}
	if len(requests) == 0 {
		return nil, fmt.Errorf("%s: no requests", path)
	}
	return requests, nil
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server address")
	method := flag.String("method", "", "full method name, e.g. /grpc.health.v1.Health/Check")
	requestsPath := flag.String("requests", "", "file of serialised requests (uint32 little-endian length, then the bytes), drawn at random")
	mode := flag.String("mode", "closed", "closed: -concurrency calls in flight; open: Poisson arrivals at -rate per second")
	concurrency := flag.Int("concurrency", 16, "calls in flight (closed)")
	rate := flag.Float64("rate", 100, "arrivals per second (open); a latency counts from the scheduled send time")
	duration := flag.Duration("duration", 10*time.Second, "how long to start calls")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each call")
	connections := flag.Int("connections", 1, "connections, used in turn (each its own, as --channels in loadgen.py)")
	seed := flag.Int64("seed", 7, "seed of the request draws and the arrival times")
	flag.Parse()
	if *method == "" || *requestsPath == "" || *connections < 1 || (*mode != "closed" && *mode != "open") || (*mode == "closed" && *concurrency < 1) || (*mode == "open" && *rate <= 0) {
		fmt.Fprintln(os.Stderr, "goload: -method and -requests are required; -mode is closed or open; -connections, -concurrency and -rate must be positive")
		os.Exit(2)
	}
	requests, err := readRequests(*requestsPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(2)
	}
	// Every connection is up before the clock starts, so no call of the phase pays a handshake.
	conns := make([]*grpc.ClientConn, *connections)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		conns[i], err = grpc.DialContext(ctx, *target, grpc.WithInsecure(), grpc.WithBlock(),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "goload: cannot connect to %s: %v\n", *target, err)
			os.Exit(2)
		}
		defer conns[i].Close()
	}

	t := &tally{report: report{Latencies: make([]float64, 0, 1<<16), Errors: map[string]int{}}}
	var next struct {
		sync.Mutex
		rng  *rand.Rand
		turn int
	}
	next.rng = rand.New(rand.NewSource(*seed))
	draw := func() (*grpc.ClientConn, []byte) {
		next.Lock()
		defer next.Unlock()
		next.turn++
		return conns[next.turn%len(conns)], requests[next.rng.Intn(len(requests))]
	}
	call := func(since time.Time) {
		conn, request := draw()
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		var reply []byte
		err := conn.Invoke(ctx, *method, &request, &reply)
		t.record(time.Since(since), err)
	}

	var calls sync.WaitGroup
	started := time.Now()
	stopAt := started.Add(*duration)
	if *mode == "closed" {
		for w := 0; w < *concurrency; w++ {
			calls.Add(1)
			go func() {
				defer calls.Done()
				for time.Now().Before(stopAt) {
					t.start()
					call(time.Now())
				}
			}()
		}
	} else {
		arrivals := rand.New(rand.NewSource(*seed + 1))
		for at := started; at.Before(stopAt); at = at.Add(time.Duration(arrivals.ExpFloat64() / *rate * float64(time.Second))) {
			time.Sleep(time.Until(at))
			t.start()
			calls.Add(1)
			go func(at time.Time) {
				defer calls.Done()
				call(at)
			}(at)
		}
	}
	calls.Wait()
	t.Elapsed = time.Since(started).Seconds()
	if err := json.NewEncoder(os.Stdout).Encode(t.report); err != nil && err != io.EOF {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(1)
	}
}
