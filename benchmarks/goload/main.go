// goload: a compiled gRPC load client for benchmarks/loadgen.py (--client go).
//
// The Python client shares the 2 cores with the server it measures, and it spends 2-6 ms
// of its own on every call at half load. This one sends requests that loadgen.py
// serialised beforehand and does not decode the replies (as a load tool that only counts
// them would), so what it measures is the server and gRPC's transport. It runs one phase
// and prints one JSON object: the calls started, each success's latency, the errors by
// status code and (with -items-field) the replies that were empty feeds, which loadgen.py
// checks and summarises exactly as its own phases. A server with bearer tokens gets the
// token of $FEEDRANK_CLIENT_TOKEN (or -token), one with TLS is spoken to with -tls-ca.
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
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
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
	Started    int            `json:"started"`
	Latencies  []float64      `json:"latencies_s"`
	Errors     map[string]int `json:"errors"`
	Elapsed    float64        `json:"elapsed_s"`
	EmptyFeeds int            `json:"empty_feeds"` // successes whose reply lacked -items-field
	SendLags   []float64      `json:"send_lags_s"` // open: how late each call started after its scheduled time
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

func (t *tally) lag(lag time.Duration) {
	t.mu.Lock()
	t.SendLags = append(t.SendLags, lag.Seconds())
	t.mu.Unlock()
}

func (t *tally) record(latency time.Duration, err error, empty bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.Errors[codeName(err)]++
	} else {
		t.Latencies = append(t.Latencies, latency.Seconds())
		if empty {
			t.EmptyFeeds++
		}
	}
}

// hasField says whether the serialised message holds a top-level field numbered field: a
// repeated field without elements is not written, so a GetFeedResponse without field 1 is
// an empty feed. Only the tags are read, each value skipped; a malformed message counts as
// holding it (goload does not judge replies, it counts them).
func hasField(message []byte, field uint64) bool {
	for len(message) > 0 {
		tag, n := uvarint(message)
		if n == 0 {
			return true
		}
		message = message[n:]
		if tag>>3 == field {
			return true
		}
		switch tag & 7 {
		case 0: // varint
			_, n = uvarint(message)
			if n == 0 {
				return true
			}
		case 1: // 64-bit
			n = 8
		case 2: // length-delimited
			size, m := uvarint(message)
			if m == 0 || size > uint64(len(message)-m) {
				return true
			}
			n = m + int(size)
		case 5: // 32-bit
			n = 4
		default: // groups, long deprecated
			return true
		}
		if n > len(message) {
			return true
		}
		message = message[n:]
	}
	return false
}

// uvarint decodes a protobuf varint: its value and length, 0 when cut short or too long.
func uvarint(data []byte) (uint64, int) {
	value, n := binary.Uvarint(data)
	if n <= 0 {
		return 0, 0
	}
	return value, n
}

// pythonNames spells each status code as Python's grpc.StatusCode does. Spelled out rather
// than derived from grpc-go's names: grpc-go says Canceled where Python says CANCELLED.
var pythonNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// codeName is the Python name of err's status code (a code outside the table as grpc-go prints it).
func codeName(err error) string {
	code := status.Code(err)
	if name, ok := pythonNames[code]; ok {
		return name
	}
	return code.String()
}

// connect dials every connection, each within timeout. With mustConnect false, a connection
// that is not up in time is dialled without waiting: its calls then fail (UNAVAILABLE) and are
// counted as errors, as the Python client counts them, rather than the phase being lost.
func connect(target string, n int, timeout time.Duration, mustConnect bool, transport grpc.DialOption) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, n)
	reachable := true // after one connection failed, the rest do not wait -timeout each
	for i := range conns {
		var conn *grpc.ClientConn
		var err error
		if reachable {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			conn, err = grpc.DialContext(ctx, target, transport, grpc.WithBlock(),
				grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
			cancel()
		}
		if (err != nil || !reachable) && !mustConnect {
			reachable = false
			conn, err = grpc.Dial(target, transport, grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		}
		if err != nil {
			for _, opened := range conns[:i] {
				opened.Close()
			}
			return nil, fmt.Errorf("cannot connect to %s: %v", target, err)
		}
		conns[i] = conn
	}
	return conns, nil
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
	mustConnect := flag.Bool("must-connect", true, "fail (status 2) when a connection is not up within -timeout; false: count its calls' failures as errors")
	codeNames := flag.Bool("code-names", false, "print the status code names as JSON (code number -> name) and exit")
	token := flag.String("token", os.Getenv("FEEDRANK_CLIENT_TOKEN"), "bearer token sent with every call (default $FEEDRANK_CLIENT_TOKEN, which keeps it out of the process list)")
	tlsCA := flag.String("tls-ca", "", "speak TLS, trusting the CA certificates in this PEM file (default: plaintext)")
	itemsField := flag.Uint64("items-field", 0, "count the successes whose reply lacks this top-level field (GetFeedResponse's items: 1) as empty feeds; 0: none")
	flag.Parse()
	if *codeNames {
		names := map[int]string{}
		for code, name := range pythonNames {
			names[int(code)] = name
		}
		if err := json.NewEncoder(os.Stdout).Encode(names); err != nil {
			os.Exit(1)
		}
		return
	}
	if *method == "" || *requestsPath == "" || *connections < 1 || (*mode != "closed" && *mode != "open") || (*mode == "closed" && *concurrency < 1) || (*mode == "open" && *rate <= 0) {
		fmt.Fprintln(os.Stderr, "goload: -method and -requests are required; -mode is closed or open; -connections, -concurrency and -rate must be positive")
		os.Exit(2)
	}
	requests, err := readRequests(*requestsPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(2)
	}
	transport := grpc.WithInsecure()
	if *tlsCA != "" {
		tls, err := credentials.NewClientTLSFromFile(*tlsCA, "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "goload: -tls-ca:", err)
			os.Exit(2)
		}
		transport = grpc.WithTransportCredentials(tls)
	}
	base := context.Background()
	if *token != "" {
		base = metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+*token)
	}
	// Every connection is up before the clock starts, so no call of the phase pays a handshake.
	conns, err := connect(*target, *connections, *timeout, *mustConnect, transport)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(2)
	}
	for _, conn := range conns {
		defer conn.Close()
	}

	t := &tally{report: report{Latencies: make([]float64, 0, 1<<16), Errors: map[string]int{}, SendLags: []float64{}}}
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
		ctx, cancel := context.WithTimeout(base, *timeout)
		defer cancel()
		var reply []byte
		err := conn.Invoke(ctx, *method, &request, &reply)
		latency := time.Since(since)
		t.record(latency, err, err == nil && *itemsField != 0 && !hasField(reply, *itemsField))
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
				t.lag(time.Since(at))
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
