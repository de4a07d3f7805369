use super::*;
use rstest::rstest;
use serde_json::json;

/// A chat completion as OpenAI streams it with `stream_options.include_usage`: the role
/// first, content pieces, the finish reason, the usage chunk with `choices: []`, `[DONE]`.
const CHAT: &str = concat!(
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"a1"}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"b22"}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":" wörld"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"c"}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"d4"}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null,"obfuscation":"e"}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"f5"}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// The non-streamed body of the same answer: what [`CHAT`] must assemble into.
fn chat_body() -> Value {
    json!({
        "id": "chatcmpl-C1x", "object": "chat.completion", "created": 1750000000,
        "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
        "system_fingerprint": "fp_34a54ae93c",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello wörld!", "refusal": null},
            "logprobs": null, "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    })
}

/// Two parallel tool calls, their arguments split over many chunks and interleaved.
const TOOLS: &str = concat!(
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_aA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Par"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_bB","type":"function","function":{"name":"get_","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"name":"time","arguments":"{\"tz\":"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":" \"CET\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// A legacy `/v1/completions` stream with `n: 2`, its choices interleaved.
const COMPLETIONS: &str = concat!(
    r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":"Once","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":"In a","index":1,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" upon","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" galaxy","index":1,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" a time","index":0,"logprobs":null,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

const RESPONSE_CREATED: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"x"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" there","logprobs":[],"obfuscation":"yy"}

"#;

const RESPONSE_DONE: &str = r#"event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there","logprobs":[]}

event: response.content_part.done
data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}],"role":"assistant"}}

event: response.completed
data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}],"role":"assistant"}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}}}

"#;

fn responses_stream() -> String {
    format!("{RESPONSE_CREATED}{RESPONSE_DONE}")
}

/// The `response` of [`RESPONSE_DONE`]'s `response.completed`.
fn responses_body() -> Value {
    json!({"id":"resp_68a","object":"response","created_at":1750000300,"status":"completed",
        "error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14",
        "output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant",
            "content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}]}],
        "usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,
            "output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}})
}

fn assemble(chunks: &[&[u8]]) -> Result<Assembled, StreamError> {
    let mut assembler = StreamAssembler::new();
    for chunk in chunks {
        assembler.push(chunk)?;
    }
    assembler.finish()
}

fn assemble_str(stream: &str) -> Result<Assembled, StreamError> {
    assemble(&[stream.as_bytes()])
}

fn partial(result: Result<Assembled, StreamError>) -> Value {
    match result {
        Err(StreamError::Cut { partial }) => partial,
        other => panic!("expected a cut stream, got {other:?}"),
    }
}

/// The `(event, data)` pairs the framing makes of `chunks`, flushed at the end.
fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
    let mut framer = Framer::new(MAX_EVENT_BYTES);
    let mut seen = Vec::new();
    let mut sink = |event: &str, data: &str| {
        seen.push((event.to_owned(), data.to_owned()));
        Ok(())
    };
    for chunk in chunks {
        framer.feed(chunk, &mut sink).expect("frames");
    }
    framer.flush(&mut sink).expect("flushes");
    seen
}

#[test]
fn chat_stream_assembles_into_the_non_streamed_body() {
    let assembled = assemble_str(CHAT).expect("complete");
    assert_eq!(assembled.body, chat_body());
    assert_eq!(assembled.end, StreamEnd::Done);
    assert_eq!(assembled.error, None);
    assert_eq!(assembled.text().as_deref(), Some("Hello wörld!"));
    let usage =
        crate::http::response::parse_success(assembled.body.to_string().as_bytes()).expect("usage");
    assert_eq!(usage.total_tokens, Some(13));
}

#[test]
fn tool_call_pieces_merge_by_index() {
    let assembled = assemble_str(TOOLS).expect("complete");
    assert_eq!(
        assembled.body,
        json!({
            "id": "chatcmpl-T9", "object": "chat.completion", "created": 1750000100,
            "model": "gpt-4.1-2025-04-14", "system_fingerprint": null,
            "choices": [{
                "index": 0, "logprobs": null, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_aA", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_bB", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}
                ]}
            }]
        })
    );
    assert_eq!(assembled.text(), None);
}

#[test]
fn tool_calls_without_index_are_told_apart_by_id() {
    let stream = concat!(
        r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"a","arguments":"{}"}}]}}]}"#,
        "\n\n",
        r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_2","type":"function","function":{"name":"b","arguments":"{\"x\""}}]}}]}"#,
        "\n\n",
        r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        "\n\ndata: [DONE]\n\n",
    );
    let body = assemble_str(stream).expect("complete").body;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"],
        json!([
            {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{\"x\":1}"}}
        ])
    );
    // `role` repeated in a later delta names the role again; it is not appended.
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
}

#[test]
fn refusal_and_logprobs_pieces_are_concatenated() {
    let stream = concat!(
        r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"logprobs":{"content":null,"refusal":[]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":"I can't"},"logprobs":{"content":null,"refusal":[{"token":"I","logprob":-0.1}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":" help."},"logprobs":{"content":null,"refusal":[{"token":" can't","logprob":-0.2}]},"finish_reason":"stop"}]}"#,
        "\n\ndata: [DONE]\n\n",
    );
    let choice = &assemble_str(stream).expect("complete").body["choices"][0];
    assert_eq!(
        choice["message"],
        json!({"role": "assistant", "content": null, "refusal": "I can't help."})
    );
    assert_eq!(
        choice["logprobs"],
        json!({"content": null, "refusal": [{"token": "I", "logprob": -0.1}, {"token": " can't", "logprob": -0.2}]})
    );
}

#[test]
fn chat_logprobs_content_is_concatenated() {
    let stream = concat!(
        r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":{"content":[{"token":"a","logprob":-1.0,"bytes":[97],"top_logprobs":[]}],"refusal":null},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"b"},"logprobs":{"content":[{"token":"b","logprob":-2.0,"bytes":[98],"top_logprobs":[]}],"refusal":null},"finish_reason":"stop"}]}"#,
        "\n\ndata: [DONE]\n\n",
    );
    let choice = &assemble_str(stream).expect("complete").body["choices"][0];
    assert_eq!(choice["message"]["content"], "ab");
    let tokens: Vec<&str> = choice["logprobs"]["content"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["token"].as_str())
        .collect();
    assert_eq!(tokens, ["a", "b"]);
}

#[test]
fn legacy_completions_assemble_per_choice() {
    let assembled = assemble_str(COMPLETIONS).expect("complete");
    assert_eq!(
        assembled.body,
        json!({
            "id": "cmpl-L1", "object": "text_completion", "created": 1750000200,
            "model": "gpt-3.5-turbo-instruct:20230824-v2",
            "choices": [
                {"text": "Once upon a time", "index": 0, "logprobs": null, "finish_reason": "stop"},
                {"text": "In a galaxy", "index": 1, "logprobs": null, "finish_reason": "length"}
            ]
        })
    );
    assert_eq!(assembled.text().as_deref(), Some("Once upon a time"));
}

#[test]
fn completions_without_object_are_recognised_by_their_text() {
    let stream = "data: {\"choices\":[{\"text\":\"a\",\"index\":0}]}\n\ndata: {\"choices\":[{\"text\":\"b\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let body = assemble_str(stream).expect("complete").body;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "ab");
}

#[test]
fn responses_stream_yields_the_completed_response() {
    let assembled = assemble_str(&responses_stream()).expect("complete");
    assert_eq!(assembled.body, responses_body());
    assert_eq!(assembled.end, StreamEnd::Completed);
    assert_eq!(assembled.error, None);
    assert_eq!(assembled.text().as_deref(), Some("Hi there"));
}

#[test]
fn responses_stream_may_end_with_done_after_its_terminal_event() {
    let stream = format!("{}data: [DONE]\n\n", responses_stream());
    let assembled = assemble_str(&stream).expect("complete");
    assert_eq!(
        (assembled.body, assembled.end),
        (responses_body(), StreamEnd::Completed)
    );
}

#[test]
fn responses_events_without_event_lines_are_read_by_type() {
    let stream: String = responses_stream()
        .lines()
        .filter(|line| !line.starts_with("event:"))
        .map(|line| format!("{line}\n"))
        .collect();
    let assembled = assemble_str(&stream).expect("complete");
    assert_eq!(assembled.end, StreamEnd::Completed);
    assert_eq!(assembled.body, responses_body());
}

#[test]
fn cut_responses_stream_keeps_the_text_streamed_so_far() {
    let partial = partial(assemble_str(RESPONSE_CREATED));
    assert_eq!(partial["status"], "in_progress");
    assert_eq!(partial["id"], "resp_68a");
    assert_eq!(
        crate::http::response::output_text(&partial).as_deref(),
        Some("Hi there")
    );
}

#[test]
fn responses_done_without_terminal_event_is_cut() {
    let stream = format!("{RESPONSE_CREATED}data: [DONE]\n\n");
    let partial = partial(assemble_str(&stream));
    assert_eq!(
        crate::http::response::output_text(&partial).as_deref(),
        Some("Hi there")
    );
}

#[test]
fn responses_function_call_arguments_are_concatenated_in_the_partial() {
    let stream = concat!(
        "event: response.output_item.added\n",
        r#"data: {"type":"response.output_item.added","output_index":0,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":"get_weather"}}"#,
        "\n\nevent: response.function_call_arguments.delta\n",
        r#"data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"{\"city\":"}"#,
        "\n\nevent: response.function_call_arguments.delta\n",
        r#"data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"\"Oslo\"}"}"#,
        "\n\n",
    );
    let partial = partial(assemble_str(stream));
    assert_eq!(partial["output"][0]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(partial["output"][0]["name"], "get_weather");
}

#[rstest]
#[case::incomplete(
    "response.incomplete",
    json!({"id":"r","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"error":null,"output":[]}),
    StreamEnd::Incomplete,
    None
)]
#[case::failed(
    "response.failed",
    json!({"id":"r","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"output":[]}),
    StreamEnd::Failed,
    Some(json!({"error":{"code":"server_error","message":"The model failed to generate a response."}}))
)]
#[case::completed(
    "response.completed",
    json!({"id":"r","status":"completed","error":null,"output":[]}),
    StreamEnd::Completed,
    None
)]
fn responses_terminal_events_keep_their_response(
    #[case] event: &str,
    #[case] response: Value,
    #[case] end: StreamEnd,
    #[case] error: Option<Value>,
) {
    let created =
        json!({"type":"response.created","response":{"id":"r","status":"in_progress","output":[]}});
    let terminal = json!({"type": event, "response": response});
    let stream =
        format!("event: response.created\ndata: {created}\n\nevent: {event}\ndata: {terminal}\n\n");
    let assembled = assemble_str(&stream).expect("ends");
    assert_eq!(assembled.body, response);
    assert_eq!(assembled.end, end);
    assert_eq!(assembled.error, error);
}

#[rstest]
#[case::openai_data_error(
    "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    json!({"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}})
)]
#[case::error_then_done(
    "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":503}}\n\ndata: [DONE]\n\n",
    json!({"error":{"message":"overloaded","type":"server_error","code":503}})
)]
#[case::llama_cpp_error_line(
    "error: {\"code\":500,\"message\":\"Failed to parse input\",\"type\":\"server_error\"}\n\n",
    json!({"error":{"code":500,"message":"Failed to parse input","type":"server_error"}})
)]
#[case::responses_error_event(
    "event: error\ndata: {\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":3}\n\n",
    json!({"error":{"code":"ERR_SOMETHING","message":"Something went wrong","param":null}})
)]
#[case::responses_error_event_wrapping_its_error(
    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"code\":\"context_length_exceeded\",\"message\":\"too long\",\"param\":\"input\"},\"sequence_number\":1}\n\n",
    json!({"error":{"type":"invalid_request_error","code":"context_length_exceeded","message":"too long","param":"input"}})
)]
fn errors_mid_stream_are_returned_as_error_bodies(#[case] tail: &str, #[case] error: Value) {
    // Two content pieces arrive before the error: they stay in the body.
    let head: String = CHAT.split_inclusive("\n\n").take(3).collect();
    let assembled = assemble_str(&format!("{head}{tail}")).expect("an error ends the stream");
    assert_eq!(assembled.end, StreamEnd::Error);
    assert_eq!(assembled.error, Some(error));
    assert_eq!(assembled.text().as_deref(), Some("Hello wörld"));
}

#[rstest]
#[case::empty("", Value::Null)]
#[case::only_keep_alives(": ping\n\n: ping\n\n", Value::Null)]
#[case::no_done(
    &CHAT[..CHAT.find("data: [DONE]").expect("has done")],
    chat_body()
)]
#[case::cut_mid_done(
    &CHAT[..CHAT.find("[DONE]").expect("has done") + 3],
    chat_body()
)]
#[case::cut_mid_json(
    &CHAT[..CHAT.find(r#"{"content":"!"}"#).expect("has piece") + 6],
    json!("Hello wörld")
)]
#[case::cut_mid_line_after_data_field(
    &CHAT[..CHAT.find(r#"{"content":"!"}"#).expect("has piece") - 120],
    json!("Hello wörld")
)]
#[case::cut_before_the_blank_line(
    &CHAT[..CHAT.find(r#""obfuscation":"d4"}"#).expect("has piece") + 20],
    json!("Hello wörld!")
)]
#[case::cut_mid_line_of_the_next_event(
    &CHAT[..CHAT.find(r#""obfuscation":"d4"}"#).expect("has piece") + 60],
    json!("Hello wörld!")
)]
fn cut_streams_return_the_partial_body(#[case] stream: &str, #[case] expected: Value) {
    let partial = partial(assemble_str(stream));
    match expected {
        // The expected content of choice 0 only: the rest is checked in other cases.
        Value::String(_) => assert_eq!(partial["choices"][0]["message"]["content"], expected),
        _ => assert_eq!(partial, expected),
    }
}

#[rstest]
#[case::done_without_blank_line("data: [DONE]\n")]
#[case::done_without_line_end("data: [DONE]")]
#[case::done_with_crlf_and_no_blank_line("data: [DONE]\r\n")]
fn a_last_event_without_its_blank_line_still_counts(#[case] done: &str) {
    let stream = CHAT.replace("data: [DONE]\n\n", done);
    let assembled = assemble_str(&stream).expect("complete");
    assert_eq!(assembled.body, chat_body());
    assert_eq!(assembled.end, StreamEnd::Done);
}

#[test]
fn events_after_the_end_marker_change_nothing() {
    let stream = format!(
        "{CHAT}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"late\"}}}}]}}\n\ndata: {{\"error\":{{\"message\":\"x\"}}}}\n\n"
    );
    let assembled = assemble_str(&stream).expect("complete");
    assert_eq!(assembled.body, chat_body());
    assert_eq!((assembled.end, assembled.error), (StreamEnd::Done, None));
}

#[test]
fn the_cut_error_says_to_retry() {
    let error = assemble_str(&CHAT[..100]).expect_err("cut");
    assert!(error.to_string().contains("outcome is unknown"), "{error}");
}

#[rstest]
#[case::lf("\n")]
#[case::crlf("\r\n")]
#[case::cr("\r")]
fn every_line_end_gives_the_same_answer(#[case] line_end: &str) {
    let stream = CHAT.replace('\n', line_end);
    assert_eq!(assemble_str(&stream).expect("complete").body, chat_body());
}

fn crlf_chat() -> String {
    CHAT.replace('\n', "\r\n")
}

fn cr_chat() -> String {
    CHAT.replace('\n', "\r")
}

#[rstest]
#[case::chat(CHAT.to_owned())]
#[case::chat_crlf(crlf_chat())]
#[case::chat_cr(cr_chat())]
#[case::tools(TOOLS.to_owned())]
#[case::completions(COMPLETIONS.to_owned())]
#[case::responses(responses_stream())]
#[case::mid_stream_error(format!("{RESPONSE_CREATED}event: error\ndata: {{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"x\"}}\n\n"))]
fn every_chunking_gives_the_same_answer(#[case] stream: String) {
    let bytes = stream.as_bytes();
    let whole = assemble(&[bytes]).expect("complete");
    for at in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(at);
        let split = assemble(&[head, tail]).expect("complete");
        assert_eq!(split, whole, "split at byte {at}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(assemble(&bytewise).expect("complete"), whole);
    let with_empty_pushes: Vec<&[u8]> = bytes.chunks(7).flat_map(|c| [c, &[][..]]).collect();
    assert_eq!(assemble(&with_empty_pushes).expect("complete"), whole);
}

#[test]
fn every_chunking_of_a_cut_stream_gives_the_same_partial() {
    let bytes = &CHAT.as_bytes()[..CHAT.find("data: [DONE]").expect("has done") - 40];
    let whole = partial(assemble(&[bytes]));
    for at in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(at);
        assert_eq!(
            partial(assemble(&[head, tail])),
            whole,
            "split at byte {at}"
        );
    }
}

#[test]
fn comments_keep_alives_and_other_fields_are_skipped() {
    let noisy: String = CHAT
        .split_inclusive("\n\n")
        .map(|event| {
            format!(": keep-alive\n\nid: 7\nretry: 3000\n:\n{event}: OPENROUTER PROCESSING\n\n")
        })
        .collect();
    assert_eq!(assemble_str(&noisy).expect("complete").body, chat_body());
}

#[test]
fn unknown_events_are_ignored() {
    let stream = format!("event: ping\ndata: {{\"type\":\"ping\"}}\n\n{CHAT}");
    assert_eq!(assemble_str(&stream).expect("complete").body, chat_body());
}

#[rstest]
#[case::one_data_line(&["data: a\n\n"], &[("message", "a")])]
#[case::data_lines_joined(&["data: a\ndata:b\ndata:  c\n\n"], &[("message", "a\nb\n c")])]
#[case::event_names_kept(&["event: response.created\ndata: {}\n\ndata: x\n\n"], &[("response.created", "{}"), ("message", "x")])]
#[case::comment_skipped(&[": hi\ndata: x\n\n"], &[("message", "x")])]
#[case::event_without_data_dropped(&["event: e\n\ndata: x\n\n"], &[("message", "x")])]
#[case::field_without_colon(&["data\ndata\n\n"], &[("message", "\n")])]
#[case::byte_order_mark(&["\u{feff}data: x\n\n"], &[("message", "x")])]
#[case::crlf_split_between_cr_and_lf(&["data: a\r", "\ndata: b\r\n\r", "\n"], &[("message", "a\nb")])]
#[case::cr_then_new_line_across_pushes(&["data: a\r", "data: b\r\r"], &[("message", "a\nb")])]
#[case::last_event_flushed(&["data: x"], &[("message", "x")])]
#[case::llama_cpp_error_field(&["error: {}\n\n"], &[("error", "{}")])]
fn framing(#[case] chunks: &[&str], #[case] expected: &[(&str, &str)]) {
    let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(e, d)| ((*e).to_owned(), (*d).to_owned()))
        .collect();
    assert_eq!(events(&chunks), expected);
}

#[test]
fn a_multi_line_data_field_is_one_json_value() {
    let stream = "data: {\"object\":\"chat.completion.chunk\",\ndata: \"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
    let body = assemble_str(stream).expect("complete").body;
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
}

#[rstest]
#[case::one_long_line(vec![vec![b'x'; 100]])]
#[case::long_line_over_many_pushes(vec![vec![b'x'; 30]; 4])]
#[case::many_data_lines_in_one_event(vec![b"data: 0123456789\n".to_vec(); 8])]
fn an_over_long_line_or_event_is_an_error(#[case] chunks: Vec<Vec<u8>>) {
    let mut assembler = StreamAssembler::with_limit(64);
    let result = chunks.iter().try_for_each(|c| assembler.push(c));
    assert!(
        matches!(result, Err(StreamError::TooLong { limit: 64 })),
        "{result:?}"
    );
}

#[test]
fn the_limit_is_per_event_not_per_stream() {
    let mut assembler = StreamAssembler::with_limit(600);
    assembler.push(CHAT.as_bytes()).expect("every event fits");
    assert_eq!(assembler.finish().expect("complete").body, chat_body());
}

#[rstest]
#[case::not_json("data: hello\n\n", "does not carry JSON")]
#[case::json_array("data: [1,2]\n\n", "not a JSON object")]
#[case::choices_not_array("data: {\"choices\":{}}\n\n", "choices is not an array")]
#[case::terminal_without_response(
    "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n",
    "no response object"
)]
#[case::mixed_endpoints(
    "data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\nevent: response.created\ndata: {\"response\":{}}\n\n",
    "responses API event in a completions stream"
)]
fn streams_that_are_not_openai_answers_are_errors(#[case] stream: &str, #[case] says: &str) {
    let mut assembler = StreamAssembler::new();
    let error = assembler.push(stream.as_bytes()).expect_err("rejected");
    assert!(error.to_string().contains(says), "{error}");
}

#[test]
fn bare_done_is_a_complete_empty_answer() {
    let assembled = assemble_str("data: [DONE]\n\n").expect("complete");
    assert_eq!(
        (assembled.body, assembled.end),
        (Value::Null, StreamEnd::Done)
    );
}

#[rstest]
#[case(Some("text/event-stream"), true)]
#[case(Some("text/event-stream; charset=utf-8"), true)]
#[case(Some("Text/Event-Stream;charset=UTF-8"), true)]
#[case(Some(" text/event-stream "), true)]
#[case(Some("application/json"), false)]
#[case(Some("text/event-streams"), false)]
#[case(Some("text/plain; x=text/event-stream"), false)]
#[case(None, false)]
fn recognises_event_stream_content_types(
    #[case] content_type: Option<&str>,
    #[case] expected: bool,
) {
    assert_eq!(is_event_stream(content_type), expected);
}
