//! A long-poll client for the tests: raw HTTP/1.1 over TCP (one request per connection), so a
//! test controls every header and can drop an answer half read.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every request of these tests ends within this (the longest hold they use is 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.body, self.status))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request; panics if it takes longer than [`REQUEST_TIMEOUT`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let req = request_bytes(addr, method, path, headers, body);
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A node that refuses a body unread may close before all of it is written, and its
        // reset may end the read: what arrived before counts.
        let _ = s.write_all(&req).await;
        let mut resp = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
        }
        resp
    };
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"));
    parse(&resp)
}

/// Sends a request and reads only the first byte of the answer, then drops the connection:
/// the node answered, the client lost the answer.
pub async fn request_and_lose_answer(addr: SocketAddr, path: &str) {
    let req = request_bytes(addr, "GET", path, &[], b"");
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&req).await.expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("the node answers");
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("an answer began");
}

fn parse(resp: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(resp).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        super::dechunk(rest)
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A long-poll session as a client holds it.
#[derive(Debug, Clone)]
pub struct Session {
    pub addr: SocketAddr,
    pub sid: String,
    pub cursor: u64,
}

impl Session {
    /// `POST /v1/lp/open` with `hello`; panics unless it is a 200. Returns the session and
    /// the open's messages.
    pub async fn open(addr: SocketAddr, hello: &Value) -> (Session, Vec<Value>) {
        Self::open_with(addr, hello, &[]).await
    }

    /// [`Session::open`] with extra request headers.
    pub async fn open_with(
        addr: SocketAddr,
        hello: &Value,
        headers: &[(&str, &str)],
    ) -> (Session, Vec<Value>) {
        let a = request(
            addr,
            "POST",
            "/v1/lp/open",
            headers,
            hello.to_string().as_bytes(),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        let s = Session {
            addr,
            sid: v["session"].as_str().expect("session").to_owned(),
            cursor: v["cursor"].as_u64().expect("cursor"),
        };
        (s, v["messages"].as_array().expect("messages").clone())
    }

    pub fn poll_path(&self, cursor: u64) -> String {
        format!("/v1/lp/poll?session={}&cursor={cursor}", self.sid)
    }

    /// One poll with the current cursor (not advanced).
    pub async fn poll_raw(&self, headers: &[(&str, &str)]) -> Answer {
        request(self.addr, "GET", &self.poll_path(self.cursor), headers, b"").await
    }

    /// One poll; advances the cursor on a 200. Returns the messages; panics unless a 200.
    pub async fn poll(&mut self) -> Vec<Value> {
        let a = self.poll_raw(&[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        self.cursor = v["cursor"].as_u64().expect("cursor");
        v["messages"].as_array().expect("messages").clone()
    }

    /// Polls until a message of `kind` arrives (others are skipped); panics after `d`.
    pub async fn expect(&mut self, kind: &str, d: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} within {d:?}"
            );
            for m in self.poll().await {
                if m["type"] == kind {
                    return m;
                }
            }
        }
    }

    /// Polls until `pred` holds for a presence entry of `user`; returns the entry.
    pub async fn expect_presence(
        &mut self,
        user: &str,
        d: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching presence of {user} within {d:?}"
            );
            for m in self.poll().await {
                if m["type"] != "presence" {
                    continue;
                }
                if let Some(e) = m["changes"]
                    .as_array()
                    .and_then(|c| c.iter().find(|e| e["user"] == user && pred(e)))
                {
                    return e.clone();
                }
            }
        }
    }

    pub async fn send_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> Answer {
        let path = format!("/v1/lp/send?session={}", self.sid);
        request(self.addr, "POST", &path, headers, body).await
    }

    /// `send` of one message or an array; panics unless a 204.
    pub async fn send(&self, msg: &Value) {
        let a = self.send_raw(msg.to_string().as_bytes(), &[]).await;
        assert_eq!(a.status, 204, "{}", a.body);
    }

    pub async fn close(&self) -> Answer {
        let path = format!("/v1/lp/close?session={}", self.sid);
        request(self.addr, "POST", &path, &[], b"").await
    }
}
