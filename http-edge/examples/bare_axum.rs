//! The reference of the P1 benchmark (`benches/p1.sh`), not part of the product: a bare axum 0.8
//! handler on the edge's Bandwidth route that reads the body and answers the success reply the
//! real edge sends, with nothing in between (no verification, parsing, core or spool).
//!
//! `cargo run --release -p http-edge --example bare_axum -- 127.0.0.1:PORT`

use axum::{Json, Router, body::Bytes, extract::Path, routing::post};
use serde_json::{Value, json};

async fn bandwidth(Path(_destination): Path<String>, _body: Bytes) -> Json<Value> {
    Json(json!({ "success": true, "message": "Message received and queued for processing" }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = Router::new().route("/bandwidth/{destination}", post(bandwidth));
    axum::serve(listener, app).await
}
