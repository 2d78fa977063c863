//! Known-answer tests for the handshake: a real exchange between ipmitool
//! and ipmi_sim (captured, see `testdata/`), replayed through our codes and
//! key derivation; and a SHA256 (suite 17) vector computed independently
//! with Python's `hmac` module from fixed inputs.

use super::*;
use crate::crypto::tests::{hex, unhex};
use crate::wire::{self, decode, payload, Protection};

/// The datagrams of a capture file: (from console?, bytes).
pub(crate) fn capture(text: &str) -> Vec<(bool, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| (l.starts_with('C'), unhex(&l[2..])))
        .collect()
}

fn payload_of(d: &[u8]) -> Vec<u8> {
    decode(d, None).unwrap().payload
}

const PASSWORD: &[u8] = b"Pw-4242-porthole";

/// Rebuild the handshake state from the captured Open Session and RAKP 1/2.
fn replay(cap: &[(bool, Vec<u8>)], password: &[u8]) -> (Handshake, Vec<u8>) {
    let suite = CipherSuite::from_id(3).unwrap();
    let open = parse_open_session_response(&payload_of(&cap[3].1), &suite).unwrap();
    let r1 = payload_of(&cap[4].1);
    let r2 = parse_rakp2(&payload_of(&cap[5].1)).unwrap();
    assert_eq!(r2.console_sid, open.console_sid);
    let user_len = usize::from(r1[27]);
    let hs = Handshake {
        suite,
        console_sid: open.console_sid,
        bmc_sid: open.bmc_sid,
        rm: r1[8..24].try_into().unwrap(),
        rc: r2.rc,
        guid: r2.guid,
        role: r1[24],
        user: r1[28..28 + user_len].to_vec(),
        kuid: Zeroizing::new(password.to_vec()),
        kg: None,
    };
    (hs, r2.auth_code)
}

#[test]
fn our_messages_match_ipmitools_bytes() {
    let cap = capture(include_str!("testdata/ipmitool-c3-mc-info.txt"));
    let suite = CipherSuite::from_id(3).unwrap();
    // ipmitool's console session id is 0xa0a2a3a4 and it asks for privilege 0 (highest).
    let open = open_session_request(0, 0, 0xa0a2_a3a4, &suite);
    assert_eq!(
        cap[2].1,
        wire::encode_v2(payload::OPEN_SESSION_REQ, 0, 0, &open, None)
    );
    let (hs, _) = replay(&cap, PASSWORD);
    assert_eq!(hs.role, NAME_ONLY_LOOKUP | Privilege::Administrator as u8);
    let r1 = rakp1(0, hs.bmc_sid, &hs.rm, hs.role, b"admin");
    assert_eq!(cap[4].1, wire::encode_v2(payload::RAKP1, 0, 0, &r1, None));
    let r3 = rakp3(0, 0, hs.bmc_sid, &hs.rakp3_code());
    assert_eq!(
        cap[6].1,
        wire::encode_v2(payload::RAKP3, 0, 0, &r3, None),
        "RAKP 3 code as ipmitool computed it"
    );
}

#[test]
fn captured_rakp2_rakp4_and_session_packets_verify() {
    let cap = capture(include_str!("testdata/ipmitool-c3-mc-info.txt"));
    let (hs, code) = replay(&cap, PASSWORD);
    hs.verify_rakp2(&code)
        .expect("RAKP 2 code of ipmi_sim verifies with the right password");
    let keys = hs.keys();
    let r4 = parse_rakp4(&payload_of(&cap[7].1)).unwrap();
    assert_eq!(r4.icv, hs.rakp4_icv(&keys), "RAKP 4 integrity check value");
    let p = Protection {
        suite: hs.suite,
        k1: &keys.k1,
        k2: &keys.k2,
    };
    // ipmitool's first session packet: Set Session Privilege Level (App 0x3b) to admin.
    let first = decode(&cap[8].1, Some(&p)).unwrap();
    assert_eq!(
        (
            first.session_id,
            first.seq,
            first.encrypted,
            first.authenticated
        ),
        (hs.bmc_sid, 3, true, true)
    );
    let (netfn, cmd, _seq, data) = wire::decode_request(&first.payload).unwrap();
    assert_eq!((netfn, cmd, data), (0x06, 0x3b, vec![0x04]));
    // ipmi_sim's answer, integrity-checked and decrypted with our K1/K2.
    let answer = decode(&cap[9].1, Some(&p)).unwrap();
    assert_eq!(answer.session_id, hs.console_sid);
    let rsp = wire::decode_response(&answer.payload).unwrap();
    assert_eq!(
        (rsp.netfn, rsp.cmd, rsp.completion, rsp.data),
        (0x07, 0x3b, 0, vec![0x04])
    );
}

#[test]
fn wrong_password_is_named() {
    let cap = capture(include_str!("testdata/ipmitool-c3-wrong-password.txt"));
    let (hs, code) = replay(&cap, b"wrongpass");
    let err = hs.verify_rakp2(&code).unwrap_err();
    assert!(
        matches!(&err, RmcpError::WrongPassword { user } if user == "admin"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("wrong password for user \"admin\""),
        "{err}"
    );
    // And the same exchange verifies with the BMC's real password.
    let (hs, code) = replay(&cap, PASSWORD);
    hs.verify_rakp2(&code).unwrap();
}

#[test]
fn unknown_user_status_is_named() {
    let cap = capture(include_str!("testdata/ipmitool-c3-unknown-user.txt"));
    let err = parse_rakp2(&payload_of(&cap[0].1)).unwrap_err();
    assert!(
        matches!(
            err,
            RmcpError::Refused {
                status: RakpStatus::UNAUTHORIZED_NAME,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "RAKP 1 refused by the BMC: 0x0d (unauthorized name): unknown user name"
    );
}

#[test]
fn privilege_names_as_ipmitool() {
    assert_eq!(
        "administrator".parse::<Privilege>().unwrap(),
        Privilege::Administrator
    );
    assert_eq!(
        "OPERATOR".parse::<Privilege>().unwrap(),
        Privilege::Operator
    );
    assert!("root"
        .parse::<Privilege>()
        .unwrap_err()
        .to_string()
        .contains("expected CALLBACK"));
}

#[test]
fn sha256_suite_17_known_answers() {
    // Expected values computed with Python's hmac/hashlib (not ring) from the
    // same inputs, following IPMI v2.0 §13.31 with RAKP-HMAC-SHA256.
    let hs = Handshake {
        suite: CipherSuite::from_id(17).unwrap(),
        console_sid: 0xa0a2_a3a4,
        bmc_sid: 0x302,
        rm: core::array::from_fn(|i| i as u8),
        rc: core::array::from_fn(|i| i as u8 + 16),
        guid: unhex("a1b2c3d4e5f60718293a4b5c6d7e0000")
            .try_into()
            .unwrap(),
        role: 0x14,
        user: b"admin".to_vec(),
        kuid: Zeroizing::new(PASSWORD.to_vec()),
        kg: None,
    };
    assert_eq!(
        hex(&hs.rakp2_code()),
        "d0dd97fd5843f4ca09e3ca24797a8bd0449cd03f9d398ff191d0adfdf624b45e"
    );
    assert_eq!(
        hex(&hs.rakp3_code()),
        "a80408452997064e55fdc618fdbc215e0038eb01df28ed28efa74ed186caae27"
    );
    let keys = hs.keys();
    assert_eq!(
        hex(&keys.sik),
        "fd81a2f76a813b8e11ddd97792952699dc52c171511d75adb6d521693f63b8bb"
    );
    assert_eq!(
        hex(&keys.k1),
        "794c9c933ecfa05f093ae3c1f28552576344763d404beee0989a4ec35afbf608"
    );
    assert_eq!(
        hex(&keys.k2),
        "8e917bd7dd102d8c36d0d652d059bfba0e5b797f055add6914f57d783076ded7"
    );
    assert_eq!(
        hex(&hs.rakp4_icv(&keys)),
        "46db4596431b806ad87b4a326a7ff3b2"
    );
}
