//! Broadcast: every message reaches every other member of its room, byte for byte, type kept.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn three_clients_each_message_reaches_exactly_the_two_others() {
    let server = start_default();
    let mut clients: Vec<Client> = (0..3).map(|_| server.client("/")).collect();
    wait_for_members(&server, 3);
    for sender in 0..3 {
        let text = format!("hello from {sender}");
        clients[sender].send(Message::text(text.clone())).unwrap();
        for (i, client) in clients.iter_mut().enumerate() {
            if i != sender {
                assert_eq!(next_text(client), text);
            }
        }
    }
    for client in clients.iter_mut() {
        assert_silent(client, scaled(Duration::from_millis(200)));
    }
}

#[test]
fn echo_mode_delivers_back_to_the_sender_too() {
    let server = start(common::Config {
        echo: true,
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 2);
    a.send(Message::text("ping")).unwrap();
    assert_eq!(next_text(&mut a), "ping");
    assert_eq!(next_text(&mut b), "ping");
    assert_silent(&mut a, scaled(Duration::from_millis(150)));
}

#[test]
fn rooms_do_not_see_each_other() {
    let server = start_default();
    let mut lobby_a = server.client("/lobby");
    let mut lobby_b = server.client("/lobby/");
    let mut other = server.client("/other");
    let mut default_room = server.client("/");
    wait_for_members(&server, 4);
    lobby_a.send(Message::text("in lobby")).unwrap();
    assert_eq!(
        next_text(&mut lobby_b),
        "in lobby",
        "/lobby/ is the room /lobby"
    );
    default_room.send(Message::text("in default")).unwrap();
    assert_silent(&mut other, scaled(Duration::from_millis(200)));
    assert_silent(&mut lobby_b, scaled(Duration::from_millis(50)));
    assert_eq!(server.metric("wschat_rooms_open"), 3.0);
}

#[test]
fn text_stays_text_and_binary_stays_binary() {
    let server = start_default();
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 2);
    a.send(Message::binary(vec![0u8, 159, 146, 150, 255]))
        .unwrap();
    a.send(Message::text("ünïcødé ✓")).unwrap();
    assert_eq!(
        next_message(&mut b),
        Message::binary(vec![0u8, 159, 146, 150, 255])
    );
    assert_eq!(next_message(&mut b), Message::text("ünïcødé ✓"));
}

#[test]
fn one_byte_and_maximum_size_messages_arrive_intact() {
    let max = 64 * 1024;
    let server = start_default();
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 2);
    let big: Vec<u8> = (0..max).map(|i| (i * 7 % 251) as u8).collect();
    a.send(Message::binary(vec![42u8])).unwrap();
    a.send(Message::binary(big.clone())).unwrap();
    let big_text = "x".repeat(max);
    a.send(Message::text(big_text.clone())).unwrap();
    a.send(Message::text("")).unwrap();
    assert_eq!(next_message(&mut b), Message::binary(vec![42u8]));
    assert_eq!(next_message(&mut b), Message::binary(big));
    assert_eq!(next_message(&mut b), Message::text(big_text));
    assert_eq!(next_message(&mut b), Message::text(""));
}

#[test]
fn order_is_kept_per_sender() {
    let server = start_default();
    let mut a = server.client("/");
    let mut b = server.client("/");
    let mut c = server.client("/");
    wait_for_members(&server, 3);
    for i in 0..500 {
        a.send(Message::text(format!("a{i}"))).unwrap();
        b.send(Message::text(format!("b{i}"))).unwrap();
    }
    let (mut next_a, mut next_b) = (0, 0);
    while next_a < 500 || next_b < 500 {
        let text = next_text(&mut c);
        if let Some(n) = text.strip_prefix('a') {
            assert_eq!(n.parse::<usize>().unwrap(), next_a);
            next_a += 1;
        } else {
            assert_eq!(text[1..].parse::<usize>().unwrap(), next_b);
            next_b += 1;
        }
    }
}

#[test]
fn a_client_leaving_mid_stream_does_not_disturb_the_others() {
    let server = start_default();
    let mut sender = server.client("/");
    let mut stays = server.client("/");
    let leaves = server.client("/");
    wait_for_members(&server, 3);
    for i in 0..200 {
        sender.send(Message::text(format!("{i}"))).unwrap();
        if i == 100 {
            // Gone without a closing handshake, with unread messages in its socket.
            drop(leaves);
            break;
        }
    }
    for i in 101..200 {
        sender.send(Message::text(format!("{i}"))).unwrap();
    }
    for i in 0..200 {
        assert_eq!(next_text(&mut stays), i.to_string());
    }
    wait_for_members(&server, 2);
}
