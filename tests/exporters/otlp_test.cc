// laneguard::otlp: the OTEL_* environment, the OTLP/JSON encoding, the delivery rules (against a
// scripted receiver on 127.0.0.1), and the drop accounting of the batch processors.
#include "laneguard/exporters/otlp.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/tmp_stream.h"

namespace laneguard {
namespace {

using Json = nlohmann::json;
using std::chrono::milliseconds;
using testing_support::TmpStream;

// ---- environment --------------------------------------------------------------------------------

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

OtlpEnvResult Read(std::map<std::string, std::string> vars, Config config = {}) {
  return ReadOtlpEnvironment(OtlpSettingsFromConfig(config), Env(std::move(vars)));
}

// One warning, naming the variable and the value.
void ExpectOneWarning(const OtlpEnvResult& r, const std::string& var, const std::string& value) {
  ASSERT_EQ(r.warnings.size(), 1u) << testing::PrintToString(r.warnings);
  EXPECT_NE(r.warnings[0].find(var + "='" + value + "'"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("using"), std::string::npos) << r.warnings[0];
}

TEST(OtlpEnvTest, NothingSetGivesTheOpenTelemetryDefaults) {
  OtlpEnvResult r = Read({});
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_TRUE(r.settings.enabled);
  EXPECT_EQ(r.settings.traces.endpoint, "http://localhost:4318/v1/traces");
  EXPECT_EQ(r.settings.logs.endpoint, "http://localhost:4318/v1/logs");
  EXPECT_EQ(r.settings.traces.timeout, milliseconds(10000));
  EXPECT_EQ(r.settings.traces.export_timeout, milliseconds(30000));
  EXPECT_EQ(r.settings.batch.schedule_delay, milliseconds(5000));
  EXPECT_EQ(r.settings.batch.max_queue_size, 2048u);
  EXPECT_EQ(r.settings.batch.max_export_batch_size, 512u);
  EXPECT_EQ(r.settings.logs.export_timeout, milliseconds(30000));
  EXPECT_EQ(r.settings.log_batch.schedule_delay, milliseconds(1000));
  EXPECT_EQ(r.settings.log_batch.max_queue_size, 2048u);
  EXPECT_EQ(r.settings.log_batch.max_export_batch_size, 512u);
  EXPECT_EQ(r.settings.sample_ratio, 1.0);
  EXPECT_TRUE(r.settings.sampler_parent_based);
  EXPECT_TRUE(r.settings.traces.headers.empty());
}

TEST(OtlpEnvTest, OurConfigIsTheBaseAndTheEnvironmentWins) {
  Config config;
  config.span_sample_rate = 0.25;
  config.enable_span_emission = false;
  OtlpEnvResult r = Read({}, config);
  EXPECT_FALSE(r.settings.enabled);
  EXPECT_EQ(r.settings.sample_ratio, 0.25);
  r = Read({{"OTEL_TRACES_SAMPLER", "always_on"}}, config);
  EXPECT_EQ(r.settings.sample_ratio, 1.0);
  EXPECT_FALSE(r.settings.sampler_parent_based);
}

TEST(OtlpEnvTest, BaseEndpointGetsTheSignalPathAppended) {
  OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"}});
  EXPECT_EQ(r.settings.traces.endpoint, "http://collector:4318/v1/traces");
  EXPECT_EQ(r.settings.logs.endpoint, "http://collector:4318/v1/logs");
  r = Read({{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example/otlp"}});
  EXPECT_EQ(r.settings.traces.endpoint, "https://c.example/otlp/v1/traces");
  EXPECT_TRUE(r.warnings.empty());
}

TEST(OtlpEnvTest, SignalEndpointsAreUsedAsGivenAndWin) {
  OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"},
                          {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"},
                          {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:2"}});
  EXPECT_EQ(r.settings.traces.endpoint, "http://t:1/custom");
  EXPECT_EQ(r.settings.logs.endpoint, "http://l:2");
  EXPECT_TRUE(r.warnings.empty());
}

TEST(OtlpEnvTest, BadEndpointsWarnAndKeepTheDefault) {
  OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318");
  EXPECT_EQ(r.settings.traces.endpoint, "http://localhost:4318/v1/traces");
  r = Read({{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x");
  EXPECT_EQ(r.settings.traces.endpoint, "http://localhost:4318/v1/traces");
  r = Read({{"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "nope"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "nope");
  EXPECT_EQ(r.settings.logs.endpoint, "http://localhost:4318/v1/logs");
}

TEST(OtlpEnvTest, HeadersArePercentDecodedAndSignalHeadersReplaceByName) {
  OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b%2Cc, tenant = t1"},
                          {"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Tenant=t2,x-only-traces=1"},
                          {"OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x-only-logs=2"}});
  EXPECT_TRUE(r.warnings.empty()) << testing::PrintToString(r.warnings);
  EXPECT_EQ(r.settings.traces.headers,
            (OtlpHeaders{{"api-key", "a b,c"}, {"Tenant", "t2"}, {"x-only-traces", "1"}}));
  EXPECT_EQ(r.settings.logs.headers,
            (OtlpHeaders{{"api-key", "a b,c"}, {"tenant", "t1"}, {"x-only-logs", "2"}}));
}

TEST(OtlpEnvTest, MalformedHeadersWarnAndAddNothing) {
  for (const char* bad : {"novalue", "=v", "k=%zz", "k=%4"}) {
    OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_HEADERS", bad}});
    ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_HEADERS", bad);
    EXPECT_TRUE(r.settings.traces.headers.empty()) << bad;
  }
  OtlpEnvResult r = Read({{"OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x");
  r = Read({{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x");
}

TEST(OtlpEnvTest, TimeoutsGeneralAndPerSignal) {
  OtlpEnvResult r =
      Read({{"OTEL_EXPORTER_OTLP_TIMEOUT", "2500"}, {"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "700"}});
  EXPECT_EQ(r.settings.traces.timeout, milliseconds(2500));
  EXPECT_EQ(r.settings.logs.timeout, milliseconds(700));
  r = Read({{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "900"}});
  EXPECT_EQ(r.settings.traces.timeout, milliseconds(900));
  EXPECT_EQ(r.settings.logs.timeout, milliseconds(10000));
  for (const char* bad : {"0", "-5", "10s", "1.5", "abc"}) {
    r = Read({{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", bad}});
    ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", bad);
    EXPECT_EQ(r.settings.traces.timeout, milliseconds(10000)) << bad;
  }
  r = Read({{"OTEL_EXPORTER_OTLP_TIMEOUT", "x"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_TIMEOUT", "x");
  EXPECT_EQ(r.settings.logs.timeout, milliseconds(10000));
  r = Read({{"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "x"}});
  ExpectOneWarning(r, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "x");
}

TEST(OtlpEnvTest, ResourceAttributesAndServiceName) {
  OtlpEnvResult r = Read({{"OTEL_RESOURCE_ATTRIBUTES",
                           "service.name=from-attrs,service.version=1.2.3,"
                           "deployment.environment=prod,team=a%2Cb%3Dc"}});
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.settings.resource.service_name, "from-attrs");
  EXPECT_EQ(r.settings.resource.service_version, "1.2.3");
  EXPECT_EQ(r.settings.resource.deployment_environment, "prod");
  ASSERT_EQ(r.settings.resource.extra.size(), 1u);
  EXPECT_EQ(r.settings.resource.extra[0].key, "team");
  EXPECT_EQ(std::get<std::string>(r.settings.resource.extra[0].value), "a,b=c");
  r = Read({{"OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"},
            {"OTEL_SERVICE_NAME", "from-name"}});
  EXPECT_EQ(r.settings.resource.service_name, "from-name");
}

TEST(OtlpEnvTest, MalformedResourceAttributesAreDiscardedWhole) {
  Resource base{.service_name = "mine"};
  OtlpEnvResult r =
      ReadOtlpEnvironment(OtlpSettingsFromConfig(Config{}, base),
                          Env({{"OTEL_RESOURCE_ATTRIBUTES", "service.name=x,broken,team=y"}}));
  ExpectOneWarning(r, "OTEL_RESOURCE_ATTRIBUTES", "service.name=x,broken,team=y");
  EXPECT_EQ(r.settings.resource.service_name, "mine");
  EXPECT_TRUE(r.settings.resource.extra.empty());
}

TEST(OtlpEnvTest, EverySampler) {
  struct Case {
    const char* sampler;
    const char* arg;
    double ratio;
    bool parent_based;
  };
  for (const Case& c :
       {Case{"always_on", nullptr, 1.0, false}, Case{"always_off", nullptr, 0.0, false},
        Case{"traceidratio", "0.125", 0.125, false}, Case{"traceidratio", nullptr, 1.0, false},
        Case{"parentbased_always_on", nullptr, 1.0, true},
        Case{"parentbased_always_off", nullptr, 0.0, true},
        Case{"parentbased_traceidratio", "0.5", 0.5, true},
        Case{"ParentBased_TraceIdRatio", "0", 0.0, true}}) {
    std::map<std::string, std::string> vars{{"OTEL_TRACES_SAMPLER", c.sampler}};
    if (c.arg != nullptr) vars["OTEL_TRACES_SAMPLER_ARG"] = c.arg;
    Config config;
    config.span_sample_rate = 0.75;  // must not leak through
    OtlpEnvResult r = Read(vars, config);
    EXPECT_TRUE(r.warnings.empty()) << c.sampler;
    EXPECT_EQ(r.settings.sample_ratio, c.ratio) << c.sampler;
    EXPECT_EQ(r.settings.sampler_parent_based, c.parent_based) << c.sampler;
  }
}

TEST(OtlpEnvTest, BadSamplerValuesWarn) {
  Config config;
  config.span_sample_rate = 0.75;
  OtlpEnvResult r = Read({{"OTEL_TRACES_SAMPLER", "sometimes"}}, config);
  ExpectOneWarning(r, "OTEL_TRACES_SAMPLER", "sometimes");
  EXPECT_EQ(r.settings.sample_ratio, 0.75);
  EXPECT_TRUE(r.settings.sampler_parent_based);
  for (const char* bad : {"1.5", "-0.1", "half", "nan"}) {
    r = Read({{"OTEL_TRACES_SAMPLER", "traceidratio"}, {"OTEL_TRACES_SAMPLER_ARG", bad}});
    ExpectOneWarning(r, "OTEL_TRACES_SAMPLER_ARG", bad);
    EXPECT_EQ(r.settings.sample_ratio, 1.0) << bad;
  }
}

TEST(OtlpEnvTest, NonParentBasedSamplerIgnoresTheParent) {
  OtlpEnvResult r = Read({{"OTEL_TRACES_SAMPLER", "always_off"}});
  Tracer plain(r.settings.TracerOptionsWith(nullptr));
  r = Read({{"OTEL_TRACES_SAMPLER", "parentbased_always_off"}});
  Tracer parent_based(r.settings.TracerOptionsWith(nullptr));
  SpanContext parent{NewTraceId(), NewSpanId(), /*sampled=*/true, /*remote=*/true};
  EXPECT_FALSE(plain.StartSpan("x", &parent).context().sampled);
  EXPECT_TRUE(parent_based.StartSpan("x", &parent).context().sampled);
  EXPECT_FALSE(parent_based.StartSpan("x").context().sampled);
}

TEST(OtlpEnvTest, BatchProcessorVariables) {
  OtlpEnvResult r = Read({{"OTEL_BSP_SCHEDULE_DELAY", "250"},
                          {"OTEL_BSP_EXPORT_TIMEOUT", "4000"},
                          {"OTEL_BSP_MAX_QUEUE_SIZE", "100"},
                          {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"}});
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.settings.batch.schedule_delay, milliseconds(250));
  EXPECT_EQ(r.settings.traces.export_timeout, milliseconds(4000));
  EXPECT_EQ(r.settings.batch.max_queue_size, 100u);
  EXPECT_EQ(r.settings.batch.max_export_batch_size, 10u);
  // The span variables leave the log records' processor alone, and the other way round.
  EXPECT_EQ(r.settings.logs.export_timeout, milliseconds(30000));
  EXPECT_EQ(r.settings.log_batch.schedule_delay, milliseconds(1000));
  EXPECT_EQ(r.settings.log_batch.max_queue_size, 2048u);

  r = Read({{"OTEL_BLRP_SCHEDULE_DELAY", "50"},
            {"OTEL_BLRP_EXPORT_TIMEOUT", "2000"},
            {"OTEL_BLRP_MAX_QUEUE_SIZE", "30"},
            {"OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "40"}});
  ExpectOneWarning(r, "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "40");
  EXPECT_EQ(r.settings.log_batch.schedule_delay, milliseconds(50));
  EXPECT_EQ(r.settings.logs.export_timeout, milliseconds(2000));
  EXPECT_EQ(r.settings.log_batch.max_queue_size, 30u);
  EXPECT_EQ(r.settings.log_batch.max_export_batch_size, 30u);
  EXPECT_EQ(r.settings.batch.schedule_delay, milliseconds(5000));
  EXPECT_EQ(r.settings.traces.export_timeout, milliseconds(30000));

  r = Read({{"OTEL_BLRP_MAX_QUEUE_SIZE", "none"}});
  ExpectOneWarning(r, "OTEL_BLRP_MAX_QUEUE_SIZE", "none");
  EXPECT_EQ(r.settings.log_batch.max_queue_size, 2048u);
}

TEST(OtlpEnvTest, BadBatchProcessorValuesWarnAndKeepDefaults) {
  struct Case {
    const char* var;
    const char* value;
  };
  for (const Case& c :
       {Case{"OTEL_BSP_SCHEDULE_DELAY", "-1"}, Case{"OTEL_BSP_SCHEDULE_DELAY", "5s"},
        Case{"OTEL_BSP_EXPORT_TIMEOUT", "0"}, Case{"OTEL_BSP_MAX_QUEUE_SIZE", "0"},
        Case{"OTEL_BSP_MAX_QUEUE_SIZE", "many"}, Case{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-3"}}) {
    OtlpEnvResult r = Read({{c.var, c.value}});
    ExpectOneWarning(r, c.var, c.value);
    EXPECT_EQ(r.settings.batch.schedule_delay, milliseconds(5000));
    EXPECT_EQ(r.settings.traces.export_timeout, milliseconds(30000));
    EXPECT_EQ(r.settings.batch.max_queue_size, 2048u);
    EXPECT_EQ(r.settings.batch.max_export_batch_size, 512u);
  }
  // Larger than the queue: clamped to it, with a warning.
  OtlpEnvResult r =
      Read({{"OTEL_BSP_MAX_QUEUE_SIZE", "64"}, {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"}});
  ExpectOneWarning(r, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100");
  EXPECT_EQ(r.settings.batch.max_export_batch_size, 64u);
  // The default batch size against a small queue is clamped silently: nobody asked for 512.
  r = Read({{"OTEL_BSP_MAX_QUEUE_SIZE", "64"}});
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.settings.batch.max_export_batch_size, 64u);
}

TEST(OtlpEnvTest, SdkDisabled) {
  EXPECT_FALSE(Read({{"OTEL_SDK_DISABLED", "true"}}).settings.enabled);
  EXPECT_FALSE(Read({{"OTEL_SDK_DISABLED", "TRUE"}}).settings.enabled);
  EXPECT_TRUE(Read({{"OTEL_SDK_DISABLED", "false"}}).settings.enabled);
  EXPECT_TRUE(Read({{"OTEL_SDK_DISABLED", ""}}).settings.enabled);
  OtlpEnvResult r = Read({{"OTEL_SDK_DISABLED", "yes"}});
  ExpectOneWarning(r, "OTEL_SDK_DISABLED", "yes");
  EXPECT_TRUE(r.settings.enabled);
  EXPECT_TRUE(r.settings.TracerOptionsWith(nullptr).enabled);
  EXPECT_FALSE(Read({{"OTEL_SDK_DISABLED", "true"}}).settings.TracerOptionsWith(nullptr).enabled);
}

TEST(OtlpEnvTest, ProtocolOtherThanJsonWarns) {
  EXPECT_TRUE(Read({{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"}}).warnings.empty());
  ExpectOneWarning(Read({{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}}),
                   "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
  ExpectOneWarning(Read({{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"}}),
                   "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc");
  ExpectOneWarning(Read({{"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"}}),
                   "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc");
}

TEST(OtlpEnvTest, ProcessEnvironmentReadsGetenv) {
  // PATH is set in any test environment; a name nobody sets is not.
  EXPECT_TRUE(ProcessEnvironment()("PATH").has_value());
  EXPECT_FALSE(ProcessEnvironment()("LANEGUARD_TEST_SURELY_UNSET_VARIABLE").has_value());
}

// ---- encoding -----------------------------------------------------------------------------------

SpanData SampleSpan() {
  SpanData s;
  s.name = "worker_call:file_read";
  s.trace_id = NewTraceId();
  s.span_id = NewSpanId();
  s.kind = SpanKind::kProducer;
  s.start_unix_nanos = 1767225600000000001;
  s.end_unix_nanos = 1767225600000000002;
  s.attributes = {
      {"n", int64_t{-9007199254740993}}, {"s", std::string("v")}, {"b", true}, {"d", 1.5}};
  s.events = {{"ev", 1767225600000000003, {{"k", std::string("x")}}, 1}};
  s.status = StatusCode::kError;
  s.status_message = "boom";
  return s;
}

TEST(OtlpEncodingTest, TraceRequestStructure) {
  const SpanData span = SampleSpan();
  Resource resource{.service_name = "svc",
                    .service_version = "2",
                    .deployment_environment = "",
                    .extra = {{"k8s.pod", std::string("p")}}};
  const Json j = Json::parse(EncodeOtlpTracesJson({span}, resource));
  ASSERT_EQ(j["resourceSpans"].size(), 1u);
  const Json& rs = j["resourceSpans"][0];
  const Json& ra = rs["resource"]["attributes"];
  ASSERT_EQ(ra.size(), 3u);  // an empty environment is left out
  EXPECT_EQ(ra[0], Json::parse(R"({"key":"service.name","value":{"stringValue":"svc"}})"));
  EXPECT_EQ(ra[1]["key"], "service.version");
  EXPECT_EQ(ra[2]["key"], "k8s.pod");
  ASSERT_EQ(rs["scopeSpans"].size(), 1u);
  EXPECT_EQ(rs["scopeSpans"][0]["scope"]["name"], "laneguard");
  EXPECT_EQ(rs["scopeSpans"][0]["scope"]["version"], std::string(LaneguardVersion()));
  const Json& s = rs["scopeSpans"][0]["spans"][0];
  EXPECT_EQ(s["traceId"], span.trace_id.Hex());
  EXPECT_EQ(s["spanId"], span.span_id.Hex());
  EXPECT_EQ(s["parentSpanId"], "");
  EXPECT_EQ(s["kind"], 4);
  EXPECT_EQ(s["startTimeUnixNano"], "1767225600000000001");
  EXPECT_EQ(s["endTimeUnixNano"], "1767225600000000002");
  EXPECT_EQ(s["attributes"][0]["value"], Json::parse(R"({"intValue":"-9007199254740993"})"));
  EXPECT_EQ(s["attributes"][1]["value"], Json::parse(R"({"stringValue":"v"})"));
  EXPECT_EQ(s["attributes"][2]["value"], Json::parse(R"({"boolValue":true})"));
  EXPECT_EQ(s["attributes"][3]["value"], Json::parse(R"({"doubleValue":1.5})"));
  EXPECT_EQ(s["events"][0]["timeUnixNano"], "1767225600000000003");
  EXPECT_EQ(s["events"][0]["droppedAttributesCount"], 1);
  EXPECT_EQ(s["status"], Json::parse(R"({"code":2,"message":"boom"})"));
  // lowerCamelCase throughout: no key with an underscore anywhere.
  std::function<void(const Json&)> no_snake = [&](const Json& v) {
    if (v.is_object()) {
      for (auto it = v.begin(); it != v.end(); ++it) {
        EXPECT_EQ(it.key().find('_'), std::string::npos) << it.key();
        no_snake(it.value());
      }
    } else if (v.is_array()) {
      for (const Json& e : v) no_snake(e);
    }
  };
  no_snake(j);
}

TEST(OtlpEncodingTest, ChildSpanCarriesItsParentAndIdsAreLowerCaseHex) {
  SpanData s = SampleSpan();
  s.parent_span_id = NewSpanId();
  const Json j = Json::parse(EncodeOtlpTracesJson({s, s}, Resource{}));
  const Json& out = j["resourceSpans"][0]["scopeSpans"][0]["spans"];
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0]["parentSpanId"], s.parent_span_id.Hex());
  for (const char* key : {"traceId", "spanId", "parentSpanId"}) {
    const std::string v = out[0][key];
    EXPECT_EQ(v.find_first_not_of("0123456789abcdef"), std::string::npos) << v;
  }
}

TEST(OtlpEncodingTest, StringsAreEscapedAndInvalidUtf8Replaced) {
  SpanData s = SampleSpan();
  s.name = "q\"b\\n\n\t\x01 \xc3\xa9 \xf0\x9f\x99\x82 bad:\xff\xc3 \xed\xa0\x80 \xc0\xaf";
  s.attributes = {{"whole", 2.0}, {"tiny", 1e-300}, {"neg", -0.5}};
  const Json j = Json::parse(EncodeOtlpTracesJson({s}, Resource{}));
  const Json& out = j["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
  const std::string fffd = "\xef\xbf\xbd";
  EXPECT_EQ(out["name"], "q\"b\\n\n\t\x01 \xc3\xa9 \xf0\x9f\x99\x82 bad:" + fffd + fffd + " " +
                             fffd + fffd + fffd + " " + fffd + fffd);
  ASSERT_TRUE(out["attributes"][0]["value"]["doubleValue"].is_number_float());
  EXPECT_EQ(out["attributes"][0]["value"]["doubleValue"], 2.0);
  EXPECT_EQ(out["attributes"][1]["value"]["doubleValue"], 1e-300);
  EXPECT_EQ(out["attributes"][2]["value"]["doubleValue"], -0.5);
}

TEST(OtlpEncodingTest, LogRequestStructure) {
  LogRecord known{.time_unix_nanos = 1767225600000000009,
                  .level = LogLevel::kError,
                  .message = "failed",
                  .attributes = {{"lane", std::string("critic")}},
                  .trace_id = NewTraceId(),
                  .span_id = NewSpanId()};
  LogRecord unknown{.time_unix_nanos = 5, .level = LogLevel::kInfo, .message = "m"};
  const Json j = Json::parse(EncodeOtlpLogsJson({known, unknown}, Resource{.service_name = "s"}));
  const Json& rl = j["resourceLogs"][0];
  EXPECT_EQ(rl["resource"]["attributes"][0]["value"]["stringValue"], "s");
  EXPECT_EQ(rl["scopeLogs"][0]["scope"]["name"], "laneguard");
  const Json& r = rl["scopeLogs"][0]["logRecords"];
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["timeUnixNano"], "1767225600000000009");
  EXPECT_EQ(r[0]["severityNumber"], 17);
  EXPECT_EQ(r[0]["severityText"], "ERROR");
  EXPECT_EQ(r[0]["body"], Json::parse(R"({"stringValue":"failed"})"));
  EXPECT_EQ(r[0]["attributes"][0]["key"], "lane");
  EXPECT_EQ(r[0]["traceId"], known.trace_id.Hex());
  EXPECT_EQ(r[0]["spanId"], known.span_id.Hex());
  EXPECT_FALSE(r[1].contains("traceId"));
  EXPECT_FALSE(r[1].contains("spanId"));
  EXPECT_EQ(r[1]["severityNumber"], 9);
}

TEST(OtlpEncodingTest, SeverityMappingFollowsOtlp) {
  EXPECT_EQ(OtlpSeverityNumber(LogLevel::kDebug), 5);
  EXPECT_EQ(OtlpSeverityNumber(LogLevel::kInfo), 9);
  EXPECT_EQ(OtlpSeverityNumber(LogLevel::kWarning), 13);
  EXPECT_EQ(OtlpSeverityNumber(LogLevel::kError), 17);
  EXPECT_EQ(OtlpSeverityText(LogLevel::kWarning), "WARN");
}

class RecordingSink final : public LogRecordSink {
 public:
  void OnEmit(LogRecord&& r) override { records.push_back(std::move(r)); }
  std::vector<LogRecord> records;
};

TEST(LogRecordSinkTest, LoggerHandsEachWrittenRecordToTheSink) {
  auto sink = std::make_shared<RecordingSink>();
  ManualClock clock;
  TmpStream out;
  JsonLogger logger({.min_level = LogLevel::kInfo, .clock = &clock, .sink = sink}, out.get());
  const TraceId trace = NewTraceId();
  const SpanId span = NewSpanId();
  logger.LogDebug("below the level", {});
  logger.LogWarning("w", {{"traceId", trace.Hex()}, {"spanId", span.Hex()}, {"n", int64_t{3}}});
  logger.LogInfo("i", {{"traceId", "not-hex"}, {"ok", true}});
  ASSERT_EQ(sink->records.size(), 2u);
  EXPECT_EQ(sink->records[0].level, LogLevel::kWarning);
  EXPECT_EQ(sink->records[0].time_unix_nanos, clock.UnixNanos());
  EXPECT_EQ(sink->records[0].trace_id, trace);
  EXPECT_EQ(sink->records[0].span_id, span);
  ASSERT_EQ(sink->records[0].attributes.size(), 1u);
  EXPECT_EQ(std::get<int64_t>(sink->records[0].attributes[0].value), 3);
  EXPECT_FALSE(sink->records[1].trace_id.valid());
  ASSERT_EQ(sink->records[1].attributes.size(), 2u);  // a malformed id stays an attribute
  EXPECT_EQ(sink->records[1].attributes[0].key, "traceId");
  // The JSON lines are what they were without a sink.
  const std::vector<Json> lines = out.Json();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["traceId"], trace.Hex());
}

// ---- delivery rules -----------------------------------------------------------------------------

TEST(OtlpBackoffTest, GrowsByTheMultiplierUpToTheCap) {
  OtlpRetryPolicy p{.max_attempts = 10,
                    .initial_backoff = milliseconds(100),
                    .max_backoff = milliseconds(1000),
                    .multiplier = 2.0,
                    .jitter = 0.0};
  EXPECT_EQ(OtlpBackoff(p, 1, 0.3), milliseconds(100));
  EXPECT_EQ(OtlpBackoff(p, 2, 0.3), milliseconds(200));
  EXPECT_EQ(OtlpBackoff(p, 4, 0.3), milliseconds(800));
  EXPECT_EQ(OtlpBackoff(p, 5, 0.3), milliseconds(1000));
  EXPECT_EQ(OtlpBackoff(p, 1000, 0.3), milliseconds(1000));
  // Absurd settings stay within a year rather than overflow.
  p.max_backoff = milliseconds::max();
  p.multiplier = 1e300;
  EXPECT_EQ(OtlpBackoff(p, 3, 0.3), milliseconds(int64_t{365} * 24 * 3600 * 1000));
}

TEST(OtlpBackoffTest, JitterSpreadsAroundTheBase) {
  OtlpRetryPolicy p{.max_attempts = 5,
                    .initial_backoff = milliseconds(1000),
                    .max_backoff = milliseconds(5000),
                    .multiplier = 1.5,
                    .jitter = 0.2};
  EXPECT_EQ(OtlpBackoff(p, 2, 0.0), milliseconds(1200));  // 1500 x 0.8
  EXPECT_EQ(OtlpBackoff(p, 2, 0.5), milliseconds(1500));
  EXPECT_EQ(OtlpBackoff(p, 2, 0.999999), milliseconds(1799));
  for (int retry = 1; retry < 20; ++retry) {
    for (double r : {0.0, 0.25, 0.75, 0.99}) {
      const auto d = OtlpBackoff(p, retry, r);
      EXPECT_GE(d, milliseconds(800));
      EXPECT_LE(d, milliseconds(6000));
    }
  }
}

TEST(OtlpBackoffTest, RetryableStatuses) {
  for (int s : {429, 502, 503, 504}) EXPECT_TRUE(IsRetryableHttpStatus(s)) << s;
  for (int s : {200, 400, 401, 403, 404, 408, 413, 500, 501})
    EXPECT_FALSE(IsRetryableHttpStatus(s)) << s;
}

TEST(OtlpBackoffTest, RetryAfterSecondsAndHttpDate) {
  constexpr int64_t kNow = 1445412450;  // Wed, 21 Oct 2015 07:27:30 GMT
  EXPECT_EQ(ParseRetryAfter("2", kNow), milliseconds(2000));
  EXPECT_EQ(ParseRetryAfter(" 120 ", kNow), milliseconds(120000));
  EXPECT_EQ(ParseRetryAfter("0", kNow), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", kNow), milliseconds(30000));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", kNow), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("", kNow), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("-1", kNow), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("soon", kNow), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("1.5", kNow), std::nullopt);
}

// A receiver on 127.0.0.1 that answers from a script, then with `otherwise`.
class ScriptedReceiver {
 public:
  struct Reply {
    int status = 200;
    std::string body = "{}";
    std::string retry_after;
  };
  struct Request {
    std::string path;
    std::string body;
    std::string content_type;
    std::string api_key;
  };

  explicit ScriptedReceiver(std::vector<Reply> script, Reply otherwise = Reply{200, "{}", ""})
      : script_(std::move(script)), otherwise_(std::move(otherwise)) {
    auto handler = [this](const httplib::Request& req, httplib::Response& res) {
      Reply reply;
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back({req.path, req.body, req.get_header_value("Content-Type"),
                             req.get_header_value("x-api-key")});
        reply = next_ < script_.size() ? script_[next_++] : otherwise_;
      }
      res.status = reply.status;
      if (!reply.retry_after.empty()) res.set_header("Retry-After", reply.retry_after);
      res.set_content(reply.body, "application/json");
    };
    server_.Post("/v1/traces", handler);
    server_.Post("/v1/logs", handler);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(milliseconds(1));
  }
  ~ScriptedReceiver() {
    server_.stop();
    thread_.join();
  }
  std::string Url(std::string_view path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Reply> script_;
  size_t next_ = 0;
  Reply otherwise_;
  std::vector<Request> requests_;
};

// Exporter options whose waits are recorded instead of slept.
struct Harness {
  std::mutex mu;
  std::vector<milliseconds> sleeps;
  TmpStream log_stream;
  std::shared_ptr<JsonLogger> logger = std::make_shared<JsonLogger>(
      JsonLogger::Options{.min_level = LogLevel::kDebug}, log_stream.get());

  OtlpHttpExporterOptions Options(const std::string& endpoint) {
    OtlpHttpExporterOptions o;
    o.endpoint = endpoint;
    o.headers = {{"x-api-key", "secret"}};
    o.timeout = milliseconds(5000);
    o.retry = {.max_attempts = 4,
               .initial_backoff = milliseconds(1000),
               .max_backoff = milliseconds(5000),
               .multiplier = 1.5,
               .jitter = 0.2};
    o.sleep = [this](milliseconds d) {
      std::lock_guard<std::mutex> lock(mu);
      sleeps.push_back(d);
    };
    o.random = [] { return 0.5; };
    o.logger = logger;
    return o;
  }
  std::vector<milliseconds> Sleeps() {
    std::lock_guard<std::mutex> lock(mu);
    return sleeps;
  }
};

std::vector<SpanData> Spans(size_t n) {
  std::vector<SpanData> out;
  for (size_t i = 0; i < n; ++i) out.push_back(SampleSpan());
  return out;
}

void Feed(BatchSpanProcessor& p, size_t n) {
  for (SpanData& s : Spans(n)) p.OnEnd(std::move(s));
  ASSERT_TRUE(p.ForceFlush(milliseconds(20000)));
}

void ExpectCountsAddUp(const BatchExportStats& s) {
  EXPECT_EQ(s.queued, s.exported + s.dropped() + s.pending)
      << "exported " << s.exported << " dropped " << s.dropped() << " pending " << s.pending;
}

TEST(OtlpDeliveryTest, ScriptedReceiverProvesTheRetryRules) {
  ScriptedReceiver receiver(
      {{429, "{}", "2"},
       {503},
       {200, "{}"},
       {400, R"({"code":3,"message":"bad request"})"},
       {200, R"({"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad attr"}})"}});
  Harness h;
  auto exporter = OtlpHttpSpanExporter::Create(h.Options(receiver.Url("/v1/traces")));
  ASSERT_TRUE(exporter.ok());
  OtlpHttpSpanExporter* raw = exporter->get();
  BatchSpanProcessor processor(std::move(*exporter), {.max_queue_size = 100,
                                                      .max_export_batch_size = 100,
                                                      .schedule_delay = std::chrono::hours(1)});
  // 429 (Retry-After: 2), then 503 (backoff), then 200: delivered on the third request.
  Feed(processor, 10);
  EXPECT_EQ(receiver.requests().size(), 3u);
  EXPECT_EQ(h.Sleeps(), (std::vector<milliseconds>{milliseconds(2000),
                                                   OtlpBackoff(h.Options("").retry, 2, 0.5)}));
  EXPECT_EQ(processor.stats().exported, 10u);
  // 400: one request, no retry, rejected.
  Feed(processor, 5);
  EXPECT_EQ(receiver.requests().size(), 4u);
  EXPECT_EQ(h.Sleeps().size(), 2u);
  EXPECT_EQ(processor.stats().dropped_rejected, 5u);
  // 200 with partialSuccess: 2 of 7 refused, logged.
  Feed(processor, 7);
  EXPECT_EQ(receiver.requests().size(), 5u);
  processor.Shutdown();

  const BatchExportStats s = processor.stats();
  EXPECT_EQ(s.queued, 22u);
  EXPECT_EQ(s.exported, 15u);
  EXPECT_EQ(s.dropped_rejected, 5u);
  EXPECT_EQ(s.dropped_partial_success, 2u);
  EXPECT_EQ(s.dropped_retries_exhausted, 0u);
  EXPECT_EQ(s.pending, 0u);
  ExpectCountsAddUp(s);
  const OtlpExporterStats e = raw->stats();
  EXPECT_EQ(e.requests, 5u);
  EXPECT_EQ(e.retries, 2u);
  EXPECT_EQ(e.items_exported, 15u);
  EXPECT_EQ(e.items_rejected, 5u);
  EXPECT_EQ(e.items_partial_rejected, 2u);

  for (const auto& r : receiver.requests()) {
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_EQ(r.api_key, "secret");
  }
  const std::vector<Json> logs = h.log_stream.Json();
  ASSERT_EQ(logs.size(), 2u);
  EXPECT_EQ(logs[0]["msg"], "OTLP export rejected");
  EXPECT_EQ(logs[0]["status"], 400);
  EXPECT_EQ(logs[1]["msg"], "OTLP export partially rejected");
  EXPECT_EQ(logs[1]["rejected"], 2);
  EXPECT_EQ(logs[1]["errorMessage"], "bad attr");
}

TEST(OtlpDeliveryTest, OtherStatusesAreNeverRetried) {
  for (int status : {401, 404, 413, 500, 501}) {
    ScriptedReceiver receiver({}, {status});
    Harness h;
    auto exporter = OtlpHttpSpanExporter::Create(h.Options(receiver.Url("/v1/traces")));
    ASSERT_TRUE(exporter.ok());
    const ExportResult r = (*exporter)->ExportWithResult(Spans(3), Resource{});
    EXPECT_EQ(r.code, ExportResult::Code::kRejected) << status;
    EXPECT_EQ(receiver.requests().size(), 1u) << status;
    EXPECT_TRUE(h.Sleeps().empty()) << status;
  }
}

TEST(OtlpDeliveryTest, RetryableFailuresStopAfterMaxAttempts) {
  for (int status : {429, 502, 503, 504}) {
    ScriptedReceiver receiver({}, {status});
    Harness h;
    auto exporter = OtlpHttpSpanExporter::Create(h.Options(receiver.Url("/v1/traces")));
    ASSERT_TRUE(exporter.ok());
    BatchSpanProcessor processor(std::move(*exporter), {.schedule_delay = std::chrono::hours(1)});
    Feed(processor, 6);
    EXPECT_EQ(receiver.requests().size(), 4u) << status;  // max_attempts
    const auto sleeps = h.Sleeps();
    ASSERT_EQ(sleeps.size(), 3u) << status;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(sleeps[i], OtlpBackoff(h.Options("").retry, i + 1, 0.5));
    const BatchExportStats s = processor.stats();
    EXPECT_EQ(s.dropped_retries_exhausted, 6u) << status;
    ExpectCountsAddUp(s);
  }
}

TEST(OtlpDeliveryTest, ConnectionFailuresAreRetried) {
  std::string url;
  {
    ScriptedReceiver closed({});
    url = closed.Url("/v1/traces");
  }  // nothing listens on that port any more
  Harness h;
  OtlpHttpExporterOptions o = h.Options(url);
  o.retry.max_attempts = 3;
  auto exporter = OtlpHttpSpanExporter::Create(o);
  ASSERT_TRUE(exporter.ok());
  const ExportResult result = (*exporter)->ExportWithResult(Spans(2), Resource{});
  EXPECT_EQ(result.code, ExportResult::Code::kRetriesExhausted);
  EXPECT_EQ(result.error, "Couldn't connect to server");  // curl's words, for the loss report
  EXPECT_EQ((*exporter)->stats().requests, 3u);
  EXPECT_EQ((*exporter)->stats().items_retries_exhausted, 2u);
  EXPECT_EQ(h.Sleeps().size(), 2u);
}

TEST(OtlpDeliveryTest, RetryAfterPastTheExportTimeoutGivesUpAtOnce) {
  ScriptedReceiver receiver({}, {503, "{}", "3600"});
  Harness h;
  OtlpHttpExporterOptions o = h.Options(receiver.Url("/v1/traces"));
  o.export_timeout = milliseconds(10000);
  auto exporter = OtlpHttpSpanExporter::Create(o);
  ASSERT_TRUE(exporter.ok());
  EXPECT_EQ((*exporter)->ExportWithResult(Spans(1), Resource{}).code,
            ExportResult::Code::kRetriesExhausted);
  EXPECT_EQ(receiver.requests().size(), 1u);
  EXPECT_TRUE(h.Sleeps().empty());
}

TEST(OtlpDeliveryTest, RetryAfterAsHttpDateIsReadAgainstTheClock) {
  // ManualClock starts at 2026-01-01T00:00:00Z.
  ScriptedReceiver receiver({{429, "{}", "Thu, 01 Jan 2026 00:00:07 GMT"}});
  Harness h;
  ManualClock clock;
  OtlpHttpExporterOptions o = h.Options(receiver.Url("/v1/traces"));
  o.clock = &clock;
  auto exporter = OtlpHttpSpanExporter::Create(o);
  ASSERT_TRUE(exporter.ok());
  EXPECT_EQ((*exporter)->ExportWithResult(Spans(1), Resource{}).code, ExportResult::Code::kSuccess);
  EXPECT_EQ(h.Sleeps(), std::vector<milliseconds>{milliseconds(7000)});
}

TEST(OtlpDeliveryTest, ShutdownIsBoundedAndCountsWhatIsLeft) {
  ScriptedReceiver receiver({}, {503});
  Harness h;
  OtlpHttpExporterOptions o = h.Options(receiver.Url("/v1/traces"));
  o.sleep = nullptr;  // the real wait, which Shutdown cuts short
  o.retry.initial_backoff = milliseconds(60000);
  o.retry.max_backoff = milliseconds(60000);
  o.export_timeout = milliseconds(600000);
  auto exporter = OtlpHttpSpanExporter::Create(o);
  ASSERT_TRUE(exporter.ok());
  BatchSpanProcessor processor(std::move(*exporter), {.max_queue_size = 100,
                                                      .max_export_batch_size = 2,
                                                      .schedule_delay = milliseconds(1),
                                                      .shutdown_timeout = milliseconds(100)});
  for (SpanData& s : Spans(6)) processor.OnEnd(std::move(s));
  while (receiver.requests().empty()) std::this_thread::sleep_for(milliseconds(1));
  processor.Shutdown();  // the first batch waits 60 s for its retry: cancelled
  processor.OnEnd(SampleSpan());
  const BatchExportStats s = processor.stats();
  EXPECT_EQ(s.queued, 7u);
  EXPECT_EQ(s.dropped_shutdown_timeout, 6u);
  EXPECT_EQ(s.dropped_after_shutdown, 1u);
  EXPECT_EQ(s.pending, 0u);
  ExpectCountsAddUp(s);
  EXPECT_EQ(receiver.requests().size(), 1u);
  // Why they were still there: the last attempt's answer.
  EXPECT_EQ(processor.last_export_error(), "HTTP 503");
  EXPECT_EQ(DescribeDrops(s, processor.last_export_error()),
            "1 after shutdown, 6 not sent before the flush timeout; last error: HTTP 503");
}

TEST(OtlpDeliveryTest, QueueFullDropsAreCountedBesideExports) {
  ScriptedReceiver receiver({});
  Harness h;
  auto exporter = OtlpHttpSpanExporter::Create(h.Options(receiver.Url("/v1/traces")));
  ASSERT_TRUE(exporter.ok());
  BatchSpanProcessor processor(
      std::move(*exporter),
      {.max_queue_size = 4, .max_export_batch_size = 4, .schedule_delay = std::chrono::hours(1)});
  for (SpanData& s : Spans(4)) processor.OnEnd(std::move(s));
  ASSERT_TRUE(processor.ForceFlush(milliseconds(20000)));
  processor.Shutdown();
  const BatchExportStats s = processor.stats();
  EXPECT_EQ(s.exported + s.dropped_queue_full, 4u);
  ExpectCountsAddUp(s);
}

TEST(OtlpDeliveryTest, LogsGoFromTheLoggerToTheReceiver) {
  ScriptedReceiver receiver(
      {{200, R"({"partialSuccess":{"rejectedLogRecords":1,"errorMessage":"too long"}})"}});
  Harness h;
  auto exporter = OtlpHttpLogExporter::Create(h.Options(receiver.Url("/v1/logs")));
  ASSERT_TRUE(exporter.ok());
  OtlpHttpLogExporter* raw = exporter->get();
  auto processor = std::make_shared<BatchLogRecordProcessor>(
      std::move(*exporter), Resource{.service_name = "logsvc"},
      BatchProcessorOptions{.schedule_delay = std::chrono::hours(1)});
  TmpStream lines;
  JsonLogger logger({.min_level = LogLevel::kInfo, .sink = processor}, lines.get());
  logger.LogInfo("one", {{"taskId", "t1"}});
  logger.LogError("two", {});
  ASSERT_TRUE(processor->ForceFlush(milliseconds(20000)));
  processor->Shutdown();
  ASSERT_EQ(receiver.requests().size(), 1u);
  const Json body = Json::parse(receiver.requests()[0].body);
  EXPECT_EQ(receiver.requests()[0].path, "/v1/logs");
  const Json& records = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["body"]["stringValue"], "one");
  EXPECT_EQ(records[1]["severityText"], "ERROR");
  const BatchExportStats s = processor->stats();
  EXPECT_EQ(s.exported, 1u);
  EXPECT_EQ(s.dropped_partial_success, 1u);
  ExpectCountsAddUp(s);
  EXPECT_EQ(raw->stats().items_partial_rejected, 1u);
  EXPECT_EQ(h.log_stream.Json().at(0)["signal"], "logs");
}

TEST(OtlpExporterTest, EndpointMustBeAnHttpUrl) {
  OtlpHttpExporterOptions o;
  o.endpoint = "localhost:4318";
  auto e = OtlpHttpSpanExporter::Create(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().field(), "endpoint");
  EXPECT_EQ(e.error().value(), "\"localhost:4318\"");
  EXPECT_FALSE(OtlpHttpLogExporter::Create(o).ok());
}

}  // namespace
}  // namespace laneguard
