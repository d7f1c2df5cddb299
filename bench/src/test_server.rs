//! A minimal HTTP/1.1 server for the load generators' tests: it parses each request (line,
//! headers, body by Content-Length) and answers what the test's function says, keeping the
//! connection open. Not a general server: no chunked bodies, no pipelining limits.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub(crate) struct Request {
    /// "POST /path HTTP/1.1".
    pub line: String,
    /// Names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The status line's tail ("200 OK") and a JSON body.
pub(crate) type Answer = (&'static str, String);

/// Serves on a free loopback port until the returned task is aborted (which drops every
/// connection too); returns "127.0.0.1:PORT".
pub(crate) async fn serve<F>(answer: F) -> (String, JoinHandle<()>)
where
    F: Fn(Request) -> Answer + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            connections.spawn(serve_connection(stream, Arc::clone(&answer)));
        }
    });
    (addr, task)
}

async fn serve_connection<F>(stream: TcpStream, answer: Arc<F>) -> std::io::Result<()>
where
    F: Fn(Request) -> Answer,
{
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let content_length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; content_length];
        stream.read_exact(&mut body).await?;
        let request = Request {
            line: line.trim_end().to_string(),
            headers,
            body,
        };
        let (status, reply) = answer(request);
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        stream.get_mut().write_all(response.as_bytes()).await?;
    }
}
