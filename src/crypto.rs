//! Encryption of tokens at rest: AES-256-GCM under a key ring.
//!
//! The first key encrypts; every listed key decrypts, so keys rotate without logging anyone out. Decrypt-only
//! keys open values but never seal them: rotation is two-phase (add the new key decrypt-only on every replica,
//! then make it the encrypting key), so no replica ever meets a key id it lacks. The AAD
//! binds a ciphertext to its session and field: a value copied to another session or field fails to open.
//! Stored form: `v1.<kid>.<base64url(nonce || ciphertext+tag)>`.
//!
//! The same ring also MACs what a session says about itself in the clear (`userId`, `provider`, `sid`, the
//! clock fields): HMAC-SHA256 under a key derived from the AES key, stored as `v1.<kid>.<base64url(tag)>`
//! beside the fields, so an edit in Redis is seen on the very next check without decrypting anything.

use aes_gcm::aead::{Aead, Generate, Key, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 12;
const PREFIX: &str = "v1";

#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    #[error("key entry {0}: expected `<kid>:<base64 of 32 bytes>`")]
    BadKey(usize),
    #[error("no encryption key configured")]
    NoKey,
    #[error("duplicate key id {0:?}")]
    DuplicateKid(String),
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext names an unknown key id")]
    UnknownKey,
    #[error("ciphertext failed authentication")]
    Tampered,
}

/// A named AES-256 key and the MAC key derived from it. Neither type prints the key.
struct NamedKey {
    kid: String,
    cipher: Aes256Gcm,
    /// Keyed once; each MAC clones this state.
    mac: HmacSha256,
}

/// Domain separation: the MAC key is HMAC(AES key, this label), never the AES key itself.
const MAC_KEY_LABEL: &[u8] = b"portcullis/session-mac/v1";

/// The configured keys; the first one encrypts.
pub struct KeyRing {
    keys: Vec<NamedKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("KeyRing").field("kids", &kids).finish()
    }
}

impl KeyRing {
    /// Parses entries of the form printed by [`generate_key`].
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, CryptoError> {
        Self::parse_with_decrypt_only::<S, S>(entries, &[])
    }

    /// As [`KeyRing::parse`], plus keys that only decrypt (entry numbers continue after `encrypting`).
    pub fn parse_with_decrypt_only<S: AsRef<str>, T: AsRef<str>>(
        encrypting: &[S],
        decrypt_only: &[T],
    ) -> Result<Self, CryptoError> {
        if encrypting.is_empty() {
            return Err(CryptoError::NoKey);
        }
        let entries = encrypting.iter().map(AsRef::as_ref).chain(decrypt_only.iter().map(AsRef::as_ref));
        let mut keys: Vec<NamedKey> = Vec::with_capacity(encrypting.len() + decrypt_only.len());
        for (i, entry) in entries.enumerate() {
            let (kid, b64) = entry.trim().split_once(':').ok_or(CryptoError::BadKey(i))?;
            if kid.is_empty() || kid.contains('.') {
                return Err(CryptoError::BadKey(i));
            }
            let raw = STANDARD.decode(b64).map_err(|_| CryptoError::BadKey(i))?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| CryptoError::BadKey(i))?;
            let mut derive = HmacSha256::new_from_slice(&raw).map_err(|_| CryptoError::BadKey(i))?;
            derive.update(MAC_KEY_LABEL);
            let mac =
                HmacSha256::new_from_slice(&derive.finalize().into_bytes()).map_err(|_| CryptoError::BadKey(i))?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(CryptoError::DuplicateKid(kid.to_string()));
            }
            keys.push(NamedKey { kid: kid.to_string(), cipher, mac });
        }
        if keys.is_empty() {
            return Err(CryptoError::NoKey);
        }
        Ok(Self { keys })
    }

    /// Encrypts `plaintext` for `field` of session `session_id`.
    pub fn encrypt(&self, session_id: &str, field: &str, plaintext: &str) -> Result<String, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::NoKey)?;
        let nonce = Nonce::generate();
        let aad = aad(session_id, field);
        let ct = key
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Malformed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&ct);
        Ok(format!("{PREFIX}.{}.{}", key.kid, URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Opens a value produced by [`KeyRing::encrypt`] for the same session and field.
    pub fn decrypt(&self, session_id: &str, field: &str, stored: &str) -> Result<String, CryptoError> {
        let mut parts = stored.splitn(3, '.');
        let (Some(PREFIX), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(CryptoError::UnknownKey)?;
        let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed)?;
        if blob.len() <= NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
        let aad = aad(session_id, field);
        let pt =
            key.cipher.decrypt(&nonce, Payload { msg: ct, aad: aad.as_bytes() }).map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Tampered)
    }
}

impl KeyRing {
    /// The MAC of `parts` (each length-prefixed, so no two lists of parts ever read alike) under the
    /// encrypting key: `v1.<kid>.<base64url(tag)>`.
    pub fn mac(&self, parts: &[&[u8]]) -> Result<String, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::NoKey)?;
        let tag = tag(&key.mac, parts);
        Ok(format!("{PREFIX}.{}.{}", key.kid, URL_SAFE_NO_PAD.encode(tag)))
    }

    /// Checks a value produced by [`KeyRing::mac`] over the same parts, in constant time. Any key of the
    /// ring verifies (decrypt-only ones too); an unknown key id is [`CryptoError::UnknownKey`].
    pub fn verify_mac(&self, parts: &[&[u8]], stored: &str) -> Result<(), CryptoError> {
        let mut split = stored.splitn(3, '.');
        let (Some(PREFIX), Some(kid), Some(body)) = (split.next(), split.next(), split.next()) else {
            return Err(CryptoError::Malformed);
        };
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(CryptoError::UnknownKey)?;
        let given = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed)?;
        let mut m = key.mac.clone();
        feed(&mut m, parts);
        m.verify_slice(&given).map_err(|_| CryptoError::Tampered)
    }
}

fn feed(m: &mut HmacSha256, parts: &[&[u8]]) {
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
}

fn tag(key: &HmacSha256, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = key.clone();
    feed(&mut m, parts);
    m.finalize().into_bytes().to_vec()
}

fn aad(session_id: &str, field: &str) -> String {
    format!("portcullis/session/{session_id}/{field}")
}

/// A new key entry, `<kid>:<base64 key>`, as `portcullis keygen` prints it.
pub fn generate_key() -> String {
    let key = Key::<Aes256Gcm>::generate();
    let kid: [u8; 4] = rand::random();
    format!("{}:{}", hex::encode(kid), STANDARD.encode(key.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let ring = KeyRing::parse(&[generate_key()]).unwrap();
        let ct = ring.encrypt("s1", "idToken", "secret").unwrap();
        assert!(!ct.contains("secret"));
        assert_eq!(ring.decrypt("s1", "idToken", &ct).unwrap(), "secret");
        assert!(matches!(ring.decrypt("s2", "idToken", &ct), Err(CryptoError::Tampered)));
        assert!(matches!(ring.decrypt("s1", "accessToken", &ct), Err(CryptoError::Tampered)));
    }

    #[test]
    fn rotated_key_still_decrypts() {
        let (old, new) = (generate_key(), generate_key());
        let before = KeyRing::parse(std::slice::from_ref(&old)).unwrap();
        let ct = before.encrypt("s", "f", "v").unwrap();
        let after = KeyRing::parse(&[new, old]).unwrap();
        assert_eq!(after.decrypt("s", "f", &ct).unwrap(), "v");
        let fresh = after.encrypt("s", "f", "v").unwrap();
        assert!(matches!(before.decrypt("s", "f", &fresh), Err(CryptoError::UnknownKey)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ring = KeyRing::parse(&[generate_key()]).unwrap();
        for bad in ["", "v1", "v1..", "v1.x.", "v2.a.b", "v1.zz.!!!", "v1.zz.AAAA"] {
            assert!(ring.decrypt("s", "f", bad).is_err(), "{bad}");
        }
        let ct = ring.encrypt("s", "f", "v").unwrap();
        let mut flipped = ct.into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(ring.decrypt("s", "f", &flipped).is_err());
    }

    #[test]
    fn decrypt_only_keys_open_but_never_seal() {
        let (old, new) = (generate_key(), generate_key());
        let phase1 = KeyRing::parse_with_decrypt_only(std::slice::from_ref(&old), std::slice::from_ref(&new)).unwrap();
        let phase2 = KeyRing::parse(&[new.clone(), old.clone()]).unwrap();
        let sealed = phase1.encrypt("s", "f", "v").unwrap();
        assert!(sealed.starts_with(&format!("v1.{}.", old.split(':').next().unwrap())));
        assert_eq!(phase2.decrypt("s", "f", &sealed).unwrap(), "v");
        assert_eq!(phase1.decrypt("s", "f", &phase2.encrypt("s", "f", "v").unwrap()).unwrap(), "v");
        assert!(matches!(KeyRing::parse_with_decrypt_only::<&str, _>(&[], &[new.as_str()]), Err(CryptoError::NoKey)));
        assert!(matches!(
            KeyRing::parse_with_decrypt_only(&[old.as_str()], &[old.as_str()]),
            Err(CryptoError::DuplicateKid(_))
        ));
    }

    #[test]
    fn macs_bind_every_part_and_follow_the_ring() {
        let (old, new) = (generate_key(), generate_key());
        let ring = KeyRing::parse(std::slice::from_ref(&old)).unwrap();
        let parts: [&[u8]; 3] = [b"s1", b"alice", b"corp"];
        let mac = ring.mac(&parts).unwrap();
        ring.verify_mac(&parts, &mac).unwrap();
        for other in [&[b"s1".as_slice(), b"bob", b"corp"][..], &[b"s1", b"alicecorp", b""], &[b"s1", b"alice"]] {
            assert!(matches!(ring.verify_mac(other, &mac), Err(CryptoError::Tampered)), "{other:?}");
        }
        let rotated = KeyRing::parse_with_decrypt_only(&[new.as_str()], &[old.as_str()]).unwrap();
        rotated.verify_mac(&parts, &mac).unwrap();
        let fresh = KeyRing::parse(&[new]).unwrap();
        assert!(matches!(fresh.verify_mac(&parts, &mac), Err(CryptoError::UnknownKey)));
        for bad in ["", "v1", "v2.a.b", &mac[..mac.len() - 2], "v1.x.!!"] {
            assert!(ring.verify_mac(&parts, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_key_entries_are_rejected() {
        assert!(KeyRing::parse::<&str>(&[]).is_err());
        assert!(KeyRing::parse(&["nokid"]).is_err());
        assert!(KeyRing::parse(&["k:c2hvcnQ="]).is_err());
    }
}

/// The decoder of stored ciphertexts sees whatever is in Redis: no panic, and nothing but the exact
/// ciphertext for this session and field opens.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn garbage_never_decrypts_or_panics(stored in any::<String>()) {
            let ring = KeyRing::parse(&[generate_key()]).unwrap();
            prop_assert!(ring.decrypt("s1", "idToken", &stored).is_err());
        }

        #[test]
        fn any_flipped_byte_is_refused(plain in ".{0,64}", at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ring = KeyRing::parse(&[generate_key()]).unwrap();
            let ct = ring.encrypt("s1", "idToken", &plain).unwrap();
            prop_assert_eq!(ring.decrypt("s1", "idToken", &ct).unwrap(), plain);
            let mut bytes = ct.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(tampered) = String::from_utf8(bytes) {
                prop_assert!(ring.decrypt("s1", "idToken", &tampered).is_err());
            }
        }
    }
}
