//! The hosted Batch API client (`http::batch`) against the mock's Files and Batches endpoints,
//! over real HTTP: upload → create → poll → download, validation failure, expiry, cancel, and a
//! `missing_scope` on upload classified as `auth_transient`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use runner::domain::Class;
use runner::http::batch::{Batch, BatchApiError, BatchResult, BatchStatus};
use runner::http::client::{ApiClient, ApiKey, AuthStyle, ClientSettings};
use runner::mock::{BatchFate, MockConfig, MockServer};
use serde_json::json;

/// The longest any batch here may take to end: processing is 300 ms.
const WAIT: Duration = Duration::from_secs(10);

async fn start(config: MockConfig) -> (MockServer, ApiClient) {
    let server = MockServer::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            batch_processing: Duration::from_millis(300),
            ..config
        },
    )
    .await
    .unwrap();
    let settings = ClientSettings {
        base_url: server.base_url(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        organization: None,
        project: None,
        max_body_bytes: 1024 * 1024,
        auth: AuthStyle::Bearer,
        api_version: None,
        headers: Vec::new(),
    };
    let client = ApiClient::new(&settings, Some(&ApiKey::new("sk-test-batch-0000000000"))).unwrap();
    (server, client)
}

/// `n` chat lines; those in `failing` ask for a 500.
fn input(n: usize, failing: &[usize]) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..n {
        let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("q{i}")}]});
        if failing.contains(&i) {
            body["mock_status"] = json!(500);
        }
        let line = json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text.into_bytes()
}

async fn submit(client: &ApiClient, bytes: Vec<u8>) -> Batch {
    let file = client.upload_batch_file(bytes, "in.jsonl").await.unwrap();
    assert!(file.id.starts_with("file-"), "{file:?}");
    assert_eq!(file.purpose, "batch");
    let metadata = BTreeMap::from([("job".to_owned(), "test".to_owned())]);
    let batch = client
        .create_batch(&file.id, "/v1/chat/completions", &metadata)
        .await
        .unwrap();
    assert!(batch.id.starts_with("batch_"), "{batch:?}");
    assert_eq!(batch.status, BatchStatus::Validating);
    batch
}

/// Polls until the batch ends, at most [`WAIT`].
async fn until_ended(client: &ApiClient, id: &str) -> Batch {
    tokio::time::timeout(WAIT, async {
        loop {
            let batch = client.retrieve_batch(id).await.unwrap();
            if batch.status.is_terminal() {
                return batch;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("the batch did not end in time")
}

/// The results of a file, by line.
async fn results(client: &ApiClient, file_id: Option<&str>) -> Vec<BatchResult> {
    let Some(file_id) = file_id else {
        return Vec::new();
    };
    let mut sink: Vec<u8> = Vec::new();
    let written = client.download_file(file_id, &mut sink).await.unwrap();
    assert_eq!(written, sink.len() as u64);
    String::from_utf8(sink)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(n, line)| BatchResult::parse(line, n as u64 + 1).unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_completes_and_every_line_is_answered_once() {
    let (server, client) = start(MockConfig::default()).await;
    let n = 40;
    let batch = submit(&client, input(n, &[3, 17])).await;
    let batch = until_ended(&client, &batch.id).await;
    assert_eq!(batch.status, BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.request_counts.total, n as u64);
    assert_eq!(batch.request_counts.failed, 2);
    let ok = results(&client, batch.output_file_id.as_deref()).await;
    let failed = results(&client, batch.error_file_id.as_deref()).await;
    assert!(ok.iter().all(BatchResult::succeeded));
    assert!(
        failed
            .iter()
            .all(|r| r.status_code == Some(500) && !r.succeeded())
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for result in ok.iter().chain(&failed) {
        *seen.entry(result.custom_id.clone()).or_default() += 1;
        assert!(
            result
                .request_id
                .as_deref()
                .is_some_and(|id| id.starts_with("req_"))
        );
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|count| *count == 1), "{seen:?}");
    // Shuffled: matched by custom_id, not by position.
    let order: Vec<&str> = ok.iter().map(|r| r.custom_id.as_str()).collect();
    let mut sorted_by_input = order.clone();
    sorted_by_input.sort_by_key(|id| id[4..].parse::<usize>().unwrap());
    assert_ne!(
        order, sorted_by_input,
        "the output file came back in input order"
    );
    // The listing knows it, and cleaning up deletes the files.
    let list = client.list_batches(10, None).await.unwrap();
    assert_eq!(list.data.len(), 1);
    assert_eq!(list.first_id.as_deref(), Some(batch.id.as_str()));
    assert!(!list.has_more);
    client.delete_file(&batch.input_file_id).await.unwrap();
    let stats = server.stats().batch;
    assert_eq!(stats.uploads, 1);
    assert_eq!(stats.batches_created, 1);
    assert_eq!(stats.downloads, 2);
    assert_eq!(stats.deletes, 1);
    assert!(stats.polls >= 2, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn listing_pages_newest_first() {
    let (server, client) = start(MockConfig::default()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&client, input(1, &[])).await.id);
    }
    let first = client.list_batches(2, None).await.unwrap();
    let page: Vec<&str> = first.data.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(page, [ids[2].as_str(), ids[1].as_str()]);
    assert!(first.has_more);
    let rest = client
        .list_batches(2, first.last_id.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.data.len(), 1);
    assert_eq!(rest.data[0].id, ids[0]);
    assert!(!rest.has_more);
    server.shutdown().await;
}

#[tokio::test]
async fn a_file_that_fails_validation_fails_the_batch_naming_the_line() {
    let (server, client) = start(MockConfig::default()).await;
    let mut bytes = input(2, &[]);
    bytes.extend_from_slice(
        br#"{"custom_id":"req-0","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}"#,
    );
    let batch = submit(&client, bytes).await;
    let batch = until_ended(&client, &batch.id).await;
    assert_eq!(batch.status, BatchStatus::Failed);
    let errors = batch.errors.unwrap().data;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code.as_deref(), Some("duplicate_custom_id"));
    assert_eq!(errors[0].line, Some(3));
    assert_eq!(batch.output_file_id, None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_scripted_fate_fails_validation_then_the_next_batch_completes() {
    let config = MockConfig {
        batch_fates: vec![BatchFate::FailValidation],
        ..MockConfig::default()
    };
    let (server, client) = start(config).await;
    let first = submit(&client, input(3, &[])).await;
    assert_eq!(
        until_ended(&client, &first.id).await.status,
        BatchStatus::Failed
    );
    let second = submit(&client, input(3, &[])).await;
    assert_eq!(
        until_ended(&client, &second.id).await.status,
        BatchStatus::Completed
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_batch_has_only_its_finished_lines() {
    let config = MockConfig {
        batch_fates: vec![BatchFate::Expire],
        ..MockConfig::default()
    };
    let (server, client) = start(config).await;
    let n = 20;
    let batch = submit(&client, input(n, &[])).await;
    let batch = until_ended(&client, &batch.id).await;
    assert_eq!(batch.status, BatchStatus::Expired);
    let ok = results(&client, batch.output_file_id.as_deref()).await;
    assert_eq!(ok.len(), n / 2);
    assert_eq!(batch.request_counts.completed, (n / 2) as u64);
    assert_eq!(batch.error_file_id, None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_batch_keeps_what_was_answered() {
    let (server, client) = start(MockConfig::default()).await;
    let n = 30;
    let batch = submit(&client, input(n, &[])).await;
    let cancelling = client.cancel_batch(&batch.id).await.unwrap();
    assert_eq!(cancelling.status, BatchStatus::Cancelling);
    let batch = until_ended(&client, &batch.id).await;
    assert_eq!(batch.status, BatchStatus::Cancelled);
    let ok = results(&client, batch.output_file_id.as_deref()).await;
    assert!(
        ok.len() < n,
        "a batch cancelled at once answered every line"
    );
    assert_eq!(ok.len() as u64, batch.request_counts.completed);
    // Cancelling an ended batch is refused.
    let refused = client.cancel_batch(&batch.id).await.unwrap_err();
    assert!(
        matches!(refused, BatchApiError::Api { status: 409, .. }),
        "{refused}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn missing_scope_on_upload_and_create_is_auth_transient() {
    let config = MockConfig {
        batch_missing_scope_uploads: 1,
        batch_missing_scope_creates: 1,
        ..MockConfig::default()
    };
    let (server, client) = start(config).await;
    let error = client
        .upload_batch_file(input(1, &[]), "in.jsonl")
        .await
        .unwrap_err();
    assert!(
        matches!(error, BatchApiError::Api { status: 401, .. }),
        "{error}"
    );
    assert_eq!(error.class(), Some(Class::AuthTransient));
    assert!(error.to_string().contains("api.files.write"), "{error}");
    // The second upload goes through; the first creation flaps the same way.
    let file = client
        .upload_batch_file(input(1, &[]), "in.jsonl")
        .await
        .unwrap();
    let metadata = BTreeMap::new();
    let error = client
        .create_batch(&file.id, "/v1/chat/completions", &metadata)
        .await
        .unwrap_err();
    assert_eq!(error.class(), Some(Class::AuthTransient));
    client
        .create_batch(&file.id, "/v1/chat/completions", &metadata)
        .await
        .unwrap();
    assert_eq!(server.stats().batch.uploads, 1);
    server.shutdown().await;
}
