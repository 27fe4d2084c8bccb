//! Tests of the session module.

use super::*;

/// A stream whose writes fail once `budget` bytes are written: a cut link.
struct CutAfter<S> {
    inner: S,
    budget: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for CutAfter<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CutAfter<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.budget == 0 {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.budget);
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.budget -= n;
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_survive_a_cut_connection_exactly_once_and_in_order() {
    let (a_in, mut a_rx) = mpsc::channel(1024);
    let (b_in, mut b_rx) = mpsc::channel(1024);
    let a = Session::new(CacheLimits::memory_only(1 << 20), a_in);
    let b = Session::new(CacheLimits::memory_only(1 << 20), b_in);
    for i in 0..200u64 {
        a.send(i, Msg::Ping, vec![i as u8; 1000]).await.unwrap();
    }
    // The first connection breaks in the middle of a frame, about 60 frames in.
    let (x, y) = tokio::io::duplex(4096);
    let x = CutAfter {
        inner: x,
        budget: 60 * 1040 + 17,
    };
    let (a1, b1) = (a.clone(), b.clone());
    let ta = tokio::spawn(async move { a1.run_connection(x, None, None).await });
    let tb = tokio::spawn(async move { b1.run_connection(y, None, None).await });
    let (_, _) = (ta.await.unwrap(), tb.await.unwrap());
    assert!(b.received() < 200, "the cut came too late to test anything");
    // The second connection: each side says how far it got, as Join/Joined do.
    let (x, y) = tokio::io::duplex(4096);
    let r = b.received();
    let (a2, b2) = (a.clone(), b.clone());
    tokio::spawn(async move { a2.run_connection(x, None, Some(r)).await });
    tokio::spawn(async move { b2.run_connection(y, None, None).await });
    let mut got = Vec::new();
    while got.len() < 200 {
        let f = tokio::time::timeout(Duration::from_secs(10), b_rx.recv()).await;
        got.push(f.expect("frames stopped arriving").unwrap().env.req);
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert!(a_rx.try_recv().is_err());
    // Acknowledgements drain the sender's cache.
    for _ in 0..100 {
        if a.unacked_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.unacked_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_spread_over_several_connections_arrive_in_order() {
    let (a_in, _a_rx) = mpsc::channel(1024);
    let (b_in, mut b_rx) = mpsc::channel(1024);
    let a = Session::new(CacheLimits::memory_only(1 << 20), a_in);
    let b = Session::new(CacheLimits::memory_only(1 << 20), b_in);
    for _ in 0..3 {
        let (x, y) = tokio::io::duplex(2048);
        let (a1, b1) = (a.clone(), b.clone());
        tokio::spawn(async move { a1.run_connection(x, None, None).await });
        tokio::spawn(async move { b1.run_connection(y, None, None).await });
    }
    let sender = a.clone();
    tokio::spawn(async move {
        for i in 0..500u64 {
            sender
                .send(i, Msg::Ping, vec![0; (i % 7) as usize * 300])
                .await
                .unwrap();
        }
    });
    for i in 0..500u64 {
        assert_eq!(b_rx.recv().await.unwrap().env.req, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spills_past_memory_and_every_frame_arrives_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let limits = CacheLimits {
        memory: 10_000,
        disk: 200_000,
        spill_dir: dir.path().to_path_buf(),
        budget: None,
    };
    let (a_in, _a_rx) = mpsc::channel(1024);
    let (b_in, mut b_rx) = mpsc::channel(1024);
    let a = Session::new(limits, a_in);
    let b = Session::new(CacheLimits::memory_only(1 << 20), b_in);
    // No connection (an outage): memory fills, then the spill file.
    for i in 0..100u64 {
        a.send(i, Msg::Ping, vec![i as u8; 1000]).await.unwrap();
    }
    assert!(a.unacked_bytes() < 40_000, "{}", a.unacked_bytes());
    assert!(a.spilled_bytes() >= 80_000, "{}", a.spilled_bytes());
    // The spill file is unlinked: nothing to leave behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Past the disk limit too, senders wait.
    let full = tokio::time::timeout(
        Duration::from_millis(200),
        a.send(100, Msg::Ping, vec![0; 150_000]),
    )
    .await;
    assert!(full.is_err(), "a frame past both limits was taken");

    // A connection that breaks part way, then one that holds.
    let (x, y) = tokio::io::duplex(4096);
    let x = CutAfter {
        inner: x,
        budget: 40 * 1040 + 17,
    };
    let (a1, b1) = (a.clone(), b.clone());
    let ta = tokio::spawn(async move { a1.run_connection(x, None, None).await });
    let tb = tokio::spawn(async move { b1.run_connection(y, None, None).await });
    let (_, _) = (ta.await.unwrap(), tb.await.unwrap());
    let (x, y) = tokio::io::duplex(4096);
    let r = b.received();
    assert!(r < 100);
    let (a2, b2) = (a.clone(), b.clone());
    tokio::spawn(async move { a2.run_connection(x, None, Some(r)).await });
    tokio::spawn(async move { b2.run_connection(y, None, None).await });
    for i in 0..100u64 {
        let f = tokio::time::timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .expect("frames stopped arriving")
            .unwrap();
        assert_eq!(f.env.req, i);
        assert_eq!(f.payload, vec![i as u8; 1000]);
    }
    // Once everything is acknowledged the spill file starts over.
    for _ in 0..200 {
        if a.spilled_bytes() == 0 && a.unacked_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((a.unacked_bytes(), a.spilled_bytes()), (0, 0));
}
