//! The client side of PostgreSQL authentication, as a pure state machine: the
//! interceptor logs in to the server on a workload's behalf with a credential
//! the workload never sees (credential injection).
//!
//! The caller feeds each `Authentication` request of the server to
//! [`UpstreamAuth::step`] and writes back what it returns; no I/O happens here.
//! The cryptography is the `postgres-protocol` crate's (SCRAM-SHA-256 with
//! SASLprep, md5), never hand-written.
//!
//! Over TLS, given the server certificate's `tls-server-end-point` data
//! (RFC 5929), the exchange is SCRAM-SHA-256-PLUS when the server offers it:
//! the proof then covers the TLS session, so a man in the middle that
//! terminated TLS (possible in `require` mode, which does not check the
//! certificate) cannot relay the login. A TLS session whose server offers no
//! PLUS says `y` in the GS2 header, so that a server that does support it
//! sees the downgrade; without TLS the header says `n`. A server that ends a SCRAM exchange with AuthenticationOk before
//! proving, in SASLFinal, that it knows the password is refused: skipping
//! that proof is how an impostor would collect a session.

use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256},
    },
    message::frontend,
};

use super::{Authentication, ProtocolError, build};

/// AuthenticationOk, what the interceptor tells a workload whose session it
/// authenticated upstream itself.
pub const AUTHENTICATION_OK: &[u8] = &[b'R', 0, 0, 0, 8, 0, 0, 0, 0];

/// A password that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the server asks for a password and none is configured (password_file or password_env)"
    )]
    NoPassword,
    #[error(
        "the server asks for {0} authentication, which the interceptor cannot perform upstream"
    )]
    Unsupported(&'static str),
    #[error("the server offers no SASL mechanism the interceptor supports (offered: {0})")]
    NoMechanism(String),
    #[error("SCRAM-SHA-256 exchange failed: {0}")]
    Scram(String),
    #[error("the server sent {0} out of order")]
    OutOfOrder(&'static str),
    #[error("the server accepted the login without completing SCRAM (no server proof)")]
    ScramIncomplete,
    #[error("building a message: {0}")]
    Build(#[from] ProtocolError),
}

/// What to do after a server request.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Send these bytes to the server and wait for its next request.
    Reply(Vec<u8>),
    /// Nothing to send; wait for the server's next message (after SASLFinal).
    Wait,
    /// AuthenticationOk: the session is authenticated.
    Authenticated,
}

enum State {
    Start,
    /// A password was sent (cleartext or md5); only AuthenticationOk may follow.
    PasswordSent,
    Scram(Box<ScramSha256>),
    /// SASLFinal verified the server's signature.
    ScramVerified,
    Done,
}

/// Logs in as `user` with an optional password, following the server's lead.
pub struct UpstreamAuth {
    user: String,
    password: Option<Secret>,
    /// The server certificate's `tls-server-end-point` data, over TLS.
    binding: Option<Vec<u8>>,
    state: State,
}

impl UpstreamAuth {
    pub fn new(user: impl Into<String>, password: Option<Secret>) -> Self {
        Self {
            user: user.into(),
            password,
            binding: None,
            state: State::Start,
        }
    }

    /// Binds SCRAM to the TLS session whose server certificate gives `data`
    /// (`tls-server-end-point`).
    pub fn with_channel_binding(mut self, data: Option<Vec<u8>>) -> Self {
        self.binding = data;
        self
    }

    fn password(&self) -> Result<&str, AuthError> {
        self.password
            .as_ref()
            .map(Secret::expose)
            .ok_or(AuthError::NoPassword)
    }

    /// The answer to one Authentication request of the server.
    pub fn step(&mut self, req: Authentication<'_>) -> Result<AuthStep, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (req, state) {
            (Authentication::Ok, State::Scram(_)) => Err(AuthError::ScramIncomplete),
            (Authentication::Ok, State::Done) => Err(AuthError::OutOfOrder("AuthenticationOk")),
            (Authentication::Ok, _) => Ok(AuthStep::Authenticated),
            (Authentication::CleartextPassword, State::Start) => {
                let mut out = Vec::new();
                build::password_message(&mut out, self.password()?)?;
                self.state = State::PasswordSent;
                Ok(AuthStep::Reply(out))
            }
            (Authentication::Md5Password { salt }, State::Start) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), salt);
                let mut out = Vec::new();
                build::password_message(&mut out, &hash)?;
                self.state = State::PasswordSent;
                Ok(AuthStep::Reply(out))
            }
            (Authentication::Sasl(mechanisms), State::Start) => {
                let offers = |name: &str| mechanisms.iter().any(|m| m == name);
                let (mechanism, binding) = match &self.binding {
                    Some(data) if offers(SCRAM_SHA_256_PLUS) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(data.clone()),
                    ),
                    Some(_) if offers(SCRAM_SHA_256) => {
                        (SCRAM_SHA_256, ChannelBinding::unrequested())
                    }
                    None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    _ => {
                        let offered: Vec<&str> = mechanisms.iter().collect();
                        return Err(AuthError::NoMechanism(offered.join(", ")));
                    }
                };
                let scram = ScramSha256::new(self.password()?.as_bytes(), binding);
                let mut out = bytes::BytesMut::new();
                frontend::sasl_initial_response(mechanism, scram.message(), &mut out)
                    .map_err(|_| ProtocolError::TooLong)?;
                self.state = State::Scram(Box::new(scram));
                Ok(AuthStep::Reply(out.to_vec()))
            }
            (Authentication::SaslContinue(data), State::Scram(mut scram)) => {
                scram
                    .update(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                let mut out = bytes::BytesMut::new();
                frontend::sasl_response(scram.message(), &mut out)
                    .map_err(|_| ProtocolError::TooLong)?;
                self.state = State::Scram(scram);
                Ok(AuthStep::Reply(out.to_vec()))
            }
            (Authentication::SaslFinal(data), State::Scram(mut scram)) => {
                scram
                    .finish(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                self.state = State::ScramVerified;
                Ok(AuthStep::Wait)
            }
            (Authentication::KerberosV5, _) => Err(AuthError::Unsupported("Kerberos V5")),
            (Authentication::Gss | Authentication::GssContinue(_), _) => {
                Err(AuthError::Unsupported("GSSAPI"))
            }
            (Authentication::Sspi, _) => Err(AuthError::Unsupported("SSPI")),
            (Authentication::CleartextPassword, _) => {
                Err(AuthError::OutOfOrder("AuthenticationCleartextPassword"))
            }
            (Authentication::Md5Password { .. }, _) => {
                Err(AuthError::OutOfOrder("AuthenticationMD5Password"))
            }
            (Authentication::Sasl(_), _) => Err(AuthError::OutOfOrder("AuthenticationSASL")),
            (Authentication::SaslContinue(_), _) => {
                Err(AuthError::OutOfOrder("AuthenticationSASLContinue"))
            }
            (Authentication::SaslFinal(_), _) => {
                Err(AuthError::OutOfOrder("AuthenticationSASLFinal"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{
        BackendMessage, Direction, Framer, FrontendMessage, Progress, SaslInitialResponse,
        parse_password,
    };
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    /// Server side of the test: framed Authentication messages as a server sends them.
    fn auth_msg(code: i32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&(8 + data.len() as i32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn feed(a: &mut UpstreamAuth, wire: &[u8]) -> Result<AuthStep, AuthError> {
        let Progress::Complete(f) = Framer::new(Direction::Backend).next(wire).unwrap() else {
            panic!("incomplete")
        };
        let BackendMessage::Authentication(req) = BackendMessage::parse(&f).unwrap() else {
            panic!("not an authentication message")
        };
        a.step(req)
    }

    fn client_body(out: &[u8]) -> &[u8] {
        let Progress::Complete(f) = Framer::new(Direction::Frontend).next(out).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(f.len(), out.len());
        let FrontendMessage::AuthResponse(b) = FrontendMessage::parse(&f).unwrap() else {
            panic!("not an auth response")
        };
        b
    }

    fn pw(s: &str) -> Option<Secret> {
        Some(Secret::new(s.into()))
    }

    #[test]
    fn trust_needs_nothing() {
        let mut a = UpstreamAuth::new("app", None);
        assert_eq!(
            feed(&mut a, &auth_msg(0, b"")).unwrap(),
            AuthStep::Authenticated
        );
    }

    #[test]
    fn cleartext_and_md5() {
        let mut a = UpstreamAuth::new("app", pw("s3cret"));
        let AuthStep::Reply(out) = feed(&mut a, &auth_msg(3, b"")).unwrap() else {
            panic!()
        };
        assert_eq!(parse_password(client_body(&out)).unwrap(), "s3cret");
        assert_eq!(
            feed(&mut a, &auth_msg(0, b"")).unwrap(),
            AuthStep::Authenticated
        );

        // md5: "md5" + md5(md5(password + user) + salt), as the server computes it.
        let mut a = UpstreamAuth::new("app", pw("s3cret"));
        let AuthStep::Reply(out) = feed(&mut a, &auth_msg(5, &[1, 2, 3, 4])).unwrap() else {
            panic!()
        };
        let got = parse_password(client_body(&out)).unwrap().to_string();
        assert_eq!(got, md5_hash(b"app", b"s3cret", [1, 2, 3, 4]));
        assert!(got.starts_with("md5") && got.len() == 35 && !got.contains("s3cret"));
        // A second password request is out of order.
        assert!(matches!(
            feed(&mut a, &auth_msg(3, b"")),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn password_requests_without_a_password_fail() {
        for req in [auth_msg(3, b""), auth_msg(5, &[0; 4]), {
            auth_msg(10, b"SCRAM-SHA-256\0\0")
        }] {
            let mut a = UpstreamAuth::new("app", None);
            assert!(matches!(feed(&mut a, &req), Err(AuthError::NoPassword)));
        }
    }

    #[test]
    fn unsupported_methods_are_named() {
        for (code, name) in [(2, "Kerberos V5"), (7, "GSSAPI"), (9, "SSPI")] {
            let mut a = UpstreamAuth::new("app", pw("x"));
            let e = feed(&mut a, &auth_msg(code, b"")).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let mut a = UpstreamAuth::new("app", pw("x"));
        let e = feed(&mut a, &auth_msg(10, b"OAUTHBEARER\0\0")).unwrap_err();
        assert!(e.to_string().contains("OAUTHBEARER"), "{e}");
    }

    type HmacSha256 = Hmac<Sha256>;

    fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut m = HmacSha256::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    }

    /// A scripted SCRAM-SHA-256 server (RFC 5802/7677), independent of the
    /// client implementation, so the exchange is checked end to end.
    struct ScramServer {
        salt: Vec<u8>,
        iterations: u32,
        salted: Vec<u8>,
    }

    impl ScramServer {
        fn new(password: &str) -> Self {
            let salt = b"0123456789abcdef".to_vec();
            let iterations = 4096;
            // Hi() of RFC 5802 (PBKDF2 with one block).
            let mut u = hmac(password.as_bytes(), &[&salt[..], &[0, 0, 0, 1]].concat());
            let mut salted = u.clone();
            for _ in 1..iterations {
                u = hmac(password.as_bytes(), &u);
                salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
            }
            Self {
                salt,
                iterations,
                salted,
            }
        }
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// Runs a full exchange; `tamper` corrupts the server's final message.
    fn scram_exchange(client_pw: &str, server_pw: &str, tamper: bool) -> Result<(), AuthError> {
        let server = ScramServer::new(server_pw);
        let mut a = UpstreamAuth::new("app", pw(client_pw));
        let offer = auth_msg(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let AuthStep::Reply(first) = feed(&mut a, &offer)? else {
            panic!()
        };
        let init = SaslInitialResponse::parse(client_body(&first)).unwrap();
        assert_eq!(init.mechanism, "SCRAM-SHA-256");
        let client_first = std::str::from_utf8(init.data.unwrap()).unwrap();
        // GS2 header `n,,`: no channel binding, accepted with and without TLS.
        let bare = client_first.strip_prefix("n,,").expect("gs2 header n,,");
        let cnonce = bare.split(",r=").nth(1).unwrap();
        let nonce = format!("{cnonce}SERVERNONCE");
        let server_first = format!("r={nonce},s={},i={}", b64(&server.salt), server.iterations);
        let AuthStep::Reply(second) = feed(&mut a, &auth_msg(11, server_first.as_bytes()))? else {
            panic!()
        };
        let client_final = std::str::from_utf8(client_body(&second)).unwrap();
        let (without_proof, proof) = client_final.split_once(",p=").unwrap();
        assert_eq!(without_proof, format!("c=biws,r={nonce}"));
        let auth_message = format!("{bare},{server_first},{without_proof}");
        // Check the proof the way a server does.
        let client_key = hmac(&server.salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = base64::engine::general_purpose::STANDARD
            .decode(proof)
            .unwrap();
        let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let proof_ok = Sha256::digest(&recovered).as_slice() == stored_key.as_slice();
        assert_eq!(proof_ok, client_pw == server_pw);
        let server_key = hmac(&server.salted, b"Server Key");
        let mut server_sig = hmac(&server_key, auth_message.as_bytes());
        if tamper {
            server_sig[0] ^= 1;
        }
        let server_final = format!("v={}", b64(&server_sig));
        assert_eq!(
            feed(&mut a, &auth_msg(12, server_final.as_bytes()))?,
            AuthStep::Wait
        );
        assert_eq!(feed(&mut a, &auth_msg(0, b""))?, AuthStep::Authenticated);
        Ok(())
    }

    #[test]
    fn scram_sha_256_round_trip() {
        scram_exchange("correct horse", "correct horse", false).unwrap();
    }

    #[test]
    fn scram_refuses_a_server_that_does_not_know_the_password() {
        // The server cannot produce a valid signature without the password.
        let e = scram_exchange("correct horse", "something else", false).unwrap_err();
        assert!(matches!(e, AuthError::Scram(_)), "{e}");
        let e = scram_exchange("correct horse", "correct horse", true).unwrap_err();
        assert!(matches!(e, AuthError::Scram(_)), "{e}");
    }

    /// Over TLS the proof covers the server certificate: SCRAM-SHA-256-PLUS
    /// when offered, else the `y` flag that lets a PLUS server see a downgrade.
    #[test]
    fn channel_binding_over_tls() {
        let first = |binding: Option<Vec<u8>>, offer: &[u8]| {
            let mut a = UpstreamAuth::new("app", pw("x")).with_channel_binding(binding);
            match feed(&mut a, &auth_msg(10, offer)) {
                Ok(AuthStep::Reply(out)) => {
                    let init = SaslInitialResponse::parse(client_body(&out)).unwrap();
                    let data = String::from_utf8(init.data.unwrap().to_vec()).unwrap();
                    Ok((init.mechanism.to_string(), data, a))
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        let both = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let (mech, data, mut a) = first(Some(vec![7; 32]), both).unwrap();
        assert_eq!(mech, "SCRAM-SHA-256-PLUS");
        let bare = data.strip_prefix("p=tls-server-end-point,,").expect(&data);
        let nonce = format!("{}S", bare.split(",r=").nth(1).unwrap());
        let server_first = format!("r={nonce},s={},i=4096", b64(b"salt"));
        let AuthStep::Reply(second) = feed(&mut a, &auth_msg(11, server_first.as_bytes())).unwrap()
        else {
            panic!()
        };
        // c= carries the GS2 header and the certificate's hash.
        let mut cbind = b"p=tls-server-end-point,,".to_vec();
        cbind.extend_from_slice(&[7; 32]);
        let client_final = String::from_utf8(client_body(&second).to_vec()).unwrap();
        assert!(
            client_final.starts_with(&format!("c={},r={nonce},p=", b64(&cbind))),
            "{client_final}"
        );

        let (mech, data, _) = first(Some(vec![7; 32]), b"SCRAM-SHA-256\0\0").unwrap();
        assert_eq!((mech.as_str(), &data[..3]), ("SCRAM-SHA-256", "y,,"));
        let (mech, data, _) = first(None, both).unwrap();
        assert_eq!((mech.as_str(), &data[..3]), ("SCRAM-SHA-256", "n,,"));
        assert!(matches!(
            first(None, b"SCRAM-SHA-256-PLUS\0\0"),
            Err(AuthError::NoMechanism(_))
        ));
    }

    #[test]
    fn scram_must_finish_before_ok() {
        let mut a = UpstreamAuth::new("app", pw("x"));
        feed(&mut a, &auth_msg(10, b"SCRAM-SHA-256\0\0")).unwrap();
        assert!(matches!(
            feed(&mut a, &auth_msg(0, b"")),
            Err(AuthError::ScramIncomplete)
        ));
        let mut a = UpstreamAuth::new("app", pw("x"));
        assert!(matches!(
            feed(&mut a, &auth_msg(11, b"r=x,s=eA==,i=1")),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
