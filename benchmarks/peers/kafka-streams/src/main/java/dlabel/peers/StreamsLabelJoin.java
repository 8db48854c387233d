package dlabel.peers;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.format.DateTimeParseException;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.JoinWindows;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.StreamJoined;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * dlabel's binary label as a Kafka Streams application: a KStream-KStream left join of the
 * requests with the positive feedback, keyed by request id (the record key, as the
 * producers wrote it: co-partitioned, murmur2), event time from each event's {@code ts}.
 *
 * <p>JoinWindows: feedback counts if {@code r.ts <= f.ts < r.ts + window} ({@code before} 0,
 * {@code after} window - 1 ms), grace = dlabel's allowed_lateness. A request with a click
 * in its window is a positive, emitted when the click is joined (one output per click);
 * one without is emitted with a null click, a negative, once stream time passes the end of
 * its window plus the grace (Kafka Streams' left join since 3.1). Invalid events (broken
 * JSON, no zone in the time, NaN, a feature of the wrong type, no key) are dropped: the
 * timestamp extractor gives them -1. An event {@code {"__end_of_benchmark__": <ms>}} is
 * the driver's end-of-input marker: a valid event at that time that never joins, so that
 * stream time passes the last windows (Kafka Streams closes windows only as stream time
 * moves).
 *
 * <p>The internal emit interval of those unmatched records is 0 (checked on every record;
 * Kafka Streams' default is once per second of wall time, and then the last windows may
 * never be emitted when no record follows the end marker). Stores: RocksDB by default
 * (Kafka Streams' own default; {@code --store memory} for its in-memory stores), each
 * event kept as its time and raw JSON, parsed again only to write a label.
 *
 * <p>Output: the labeled example as JSON (dlabel's columns; user_email as the hex
 * HMAC-SHA256 with the PII key). Prints {@code FIRST_RECORD_MS <epoch ms>} when the first
 * input record is deserialized.
 */
public final class StreamsLabelJoin {

    static final ObjectMapper MAPPER = new ObjectMapper();
    static final JsonFactory JSON = MAPPER.getFactory();
    static volatile long firstRecordMs = 0;

    /**
     * A parsed input event. The join's stores keep it as {@code [ts][end?][raw JSON]}
     * ({@link StoreSerde}) and parse the JSON again only when a label is written, so that
     * store reads (joins, the left join's scan for closed windows) cost no JSON parsing.
     */
    static final class Event {
        final byte[] raw;
        JsonNode node;  // null until needed, for an event read back from a store
        final long ts;
        final boolean end;

        Event(byte[] raw, JsonNode node, long ts, boolean end) {
            this.raw = raw;
            this.node = node;
            this.ts = ts;
            this.end = end;
        }

        JsonNode node() {
            if (node == null) {
                try {
                    node = MAPPER.readTree(raw);
                } catch (IOException e) {
                    throw new IllegalStateException(e);
                }
            }
            return node;
        }
    }

    /** The stores' format of an event: 8 bytes of time, 1 byte end marker, the JSON. */
    static final class StoreSerde implements Serde<Event> {
        @Override
        public Serializer<Event> serializer() {
            return (topic, e) -> {
                if (e == null) {
                    return null;
                }
                byte[] out = new byte[9 + e.raw.length];
                java.nio.ByteBuffer.wrap(out).putLong(e.ts).put((byte) (e.end ? 1 : 0));
                System.arraycopy(e.raw, 0, out, 9, e.raw.length);
                return out;
            };
        }

        @Override
        public Deserializer<Event> deserializer() {
            return (topic, data) -> {
                if (data == null) {
                    return null;
                }
                java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(data);
                long ts = b.getLong();
                boolean end = b.get() == 1;
                return new Event(java.util.Arrays.copyOfRange(data, 9, data.length), null, ts,
                        end);
            };
        }
    }

    /** Event time as epoch ms: ISO-8601 with a zone, or integer epoch ms; -1 if invalid. */
    static long eventTime(JsonNode ts) {
        if (ts == null) {
            return -1;
        }
        if (ts.isIntegralNumber()) {
            return ts.asLong();
        }
        if (ts.isTextual()) {
            try {
                return Instant.parse(ts.asText()).toEpochMilli();  // Z or +hh:mm; none: error
            } catch (DateTimeParseException e) {
                return -1;
            }
        }
        return -1;
    }

    /** Parses and validates one event; null if invalid (then its timestamp is -1). */
    static final class EventDeserializer implements Deserializer<Event> {
        final boolean request;

        EventDeserializer(boolean request) {
            this.request = request;
        }

        @Override
        public Event deserialize(String topic, byte[] data) {
            if (firstRecordMs == 0) {
                firstRecordMs = System.currentTimeMillis();
                System.out.println("FIRST_RECORD_MS " + firstRecordMs);
                System.out.flush();
            }
            if (data == null) {
                return null;
            }
            JsonNode node;
            try {
                node = MAPPER.readTree(data);  // NaN and Infinity are not JSON: rejected
            } catch (IOException e) {
                return null;
            }
            if (node == null || !node.isObject()) {
                return null;
            }
            JsonNode end = node.get("__end_of_benchmark__");
            if (end != null && end.isIntegralNumber()) {
                return new Event(data, node, end.asLong(), true);
            }
            JsonNode id = node.get("request_id");
            if (id == null || !id.isTextual()) {
                return null;
            }
            long ts = eventTime(node.get("ts"));
            if (ts < 0) {
                return null;
            }
            if (request) {
                JsonNode f = node.get("features");
                if (f == null || !f.isObject() || !validFeatures(f)) {
                    return null;
                }
            } else {
                JsonNode type = node.get("type");
                if (type == null || !type.isTextual()) {
                    return null;
                }
            }
            return new Event(data, node, ts, false);
        }
    }

    static boolean validFeatures(JsonNode f) {
        JsonNode hour = f.get("hour");
        if (hour != null && !hour.isNull() && !hour.isIntegralNumber()) {
            return false;
        }
        JsonNode price = f.get("price");
        if (price != null && price.isTextual() && !price.asText().isEmpty()) {
            try {
                Double.parseDouble(price.asText());
            } catch (NumberFormatException e) {
                return false;
            }
        } else if (price != null && !price.isNull() && !price.isTextual() && !price.isNumber()) {
            return false;
        }
        return true;
    }

    static final class EventSerde implements Serde<Event> {
        final boolean request;

        EventSerde(boolean request) {
            this.request = request;
        }

        @Override
        public Serializer<Event> serializer() {
            return (topic, e) -> e == null ? null : e.raw;
        }

        @Override
        public Deserializer<Event> deserializer() {
            return new EventDeserializer(request);
        }
    }

    /** The event's own time; -1 (dropped by Kafka Streams) for an invalid event. */
    public static final class EventTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            Object v = record.value();
            return v instanceof Event ? ((Event) v).ts : -1;
        }
    }

    final long windowMs;
    final long datasetWindowMs;
    final ThreadLocal<Mac> hmac;

    StreamsLabelJoin(long windowMs, long datasetWindowMs, byte[] piiKey) {
        this.windowMs = windowMs;
        this.datasetWindowMs = datasetWindowMs;
        this.hmac = ThreadLocal.withInitial(() -> {
            try {
                Mac mac = Mac.getInstance("HmacSHA256");
                mac.init(new SecretKeySpec(piiKey, "HmacSHA256"));
                return mac;
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        });
    }

    static final char[] HEX = "0123456789abcdef".toCharArray();

    String hash(String value) {
        byte[] d = hmac.get().doFinal(value.getBytes(StandardCharsets.UTF_8));
        char[] out = new char[d.length * 2];
        for (int i = 0; i < d.length; i++) {
            out[2 * i] = HEX[(d[i] >> 4) & 15];
            out[2 * i + 1] = HEX[d[i] & 15];
        }
        return new String(out);
    }

    /** The labeled example: a request and its click (null: a negative). */
    String label(Event r, Event click) {
        try {
            ByteArrayOutputStream buf = new ByteArrayOutputStream(256);
            try (JsonGenerator g = JSON.createGenerator(buf)) {
                JsonNode n = r.node();
                g.writeStartObject();
                g.writeStringField("request_id", n.get("request_id").asText());
                g.writeNumberField("request_ts", r.ts);
                g.writeNumberField("window_start", r.ts - Math.floorMod(r.ts, datasetWindowMs));
                g.writeNumberField("label", click == null ? 0 : 1);
                g.writeNumberField("label_ts", click == null ? r.ts + windowMs : click.ts);
                writeField(g, "prediction", n.get("prediction"));
                writeField(g, "model_version", n.get("model_version"));
                JsonNode f = n.get("features");
                writeField(g, "hour", f.get("hour"));
                writeField(g, "category", f.get("category"));
                JsonNode price = f.get("price");
                if (price != null && price.isTextual()) {
                    String s = price.asText();
                    if (s.isEmpty()) {
                        g.writeNullField("price");
                    } else {
                        g.writeNumberField("price", Double.parseDouble(s));
                    }
                } else {
                    writeField(g, "price", price);
                }
                JsonNode email = f.get("user_email");
                if (email != null && email.isTextual()) {
                    g.writeStringField("user_email", hash(email.asText()));
                } else {
                    g.writeNullField("user_email");
                }
                g.writeEndObject();
            }
            return buf.toString(StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static void writeField(JsonGenerator g, String name, JsonNode v) throws IOException {
        g.writeFieldName(name);
        if (v == null) {
            g.writeNull();
        } else {
            g.writeTree(v);
        }
    }

    static Map<String, String> parseArgs(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --name value, got " + args[i]);
            }
            out.put(args[i].substring(2), args[i + 1]);
        }
        return out;
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = parseArgs(argv);
        long windowMs = Long.parseLong(a.get("window-ms"));
        long graceMs = Long.parseLong(a.get("grace-ms"));
        Set<String> positive = new HashSet<>(java.util.Arrays.asList(
                a.getOrDefault("positive", "click").split(",")));
        StreamsLabelJoin app = new StreamsLabelJoin(windowMs,
                Long.parseLong(a.get("dataset-window-ms")),
                a.getOrDefault("pii-key", "").getBytes(StandardCharsets.UTF_8));

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, a.get("app-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, a.getOrDefault("threads", "1"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
                a.getOrDefault("guarantee", "at_least_once").equals("exactly_once")
                        ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
        p.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, EventTime.class);
        if (a.getOrDefault("store", "rocksdb").equals("memory")) {
            p.put(StreamsConfig.DSL_STORE_SUPPLIERS_CLASS_CONFIG,
                    org.apache.kafka.streams.state.BuiltInDslStoreSuppliers
                            .InMemoryDslStoreSuppliers.class);
        }
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // A left join's non-joined records are emitted when a record moves stream time
        // past their window's close, but by default at most once per second of wall time
        // (an internal setting): after the last input record nothing would be emitted.
        // 0: checked on every record, as dlabel's finalization is on every batch.
        p.put("__emit.interval.ms.kstreams.outer.join.spurious.results.fix__",
                Long.parseLong(a.getOrDefault("emit-interval-ms", "0")));

        Serde<String> str = Serdes.String();
        EventSerde reqSerde = new EventSerde(true);
        EventSerde fbSerde = new EventSerde(false);
        StreamsBuilder b = new StreamsBuilder();
        KStream<String, Event> requests = b.stream(a.get("requests"), Consumed.with(str, reqSerde));
        KStream<String, Event> clicks = b.stream(a.get("feedback"), Consumed.with(str, fbSerde))
                .filter((k, e) -> e.end || positive.contains(e.node.get("type").asText()));
        StoreSerde stored = new StoreSerde();
        requests  // the end marker reaches the join on both sides, so that both move stream time
                .leftJoin(clicks, (r, c) -> r.end || (c != null && c.end) ? null : app.label(r, c),
                        JoinWindows.ofTimeDifferenceAndGrace(Duration.ofMillis(windowMs - 1),
                                Duration.ofMillis(graceMs)).before(Duration.ZERO),
                        StreamJoined.with(str, stored, stored))
                .filter((k, v) -> v != null)
                .to(a.get("output"), Produced.with(str, str));

        KafkaStreams streams = new KafkaStreams(b.build(), p);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            System.out.println("STATE " + System.currentTimeMillis() + " " + before + " -> " + now);
            System.out.flush();
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            done.countDown();
        }));
        System.out.println("STARTED_MS " + System.currentTimeMillis());
        System.out.flush();
        streams.start();
        done.await();
    }
}
