mod common;
use common::origin::Origin;
use common::Ringside;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probe() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let keys = 100;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let addr = rs.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = common::Conn::connect(addr).await.unwrap();
            for k in 0..keys {
                let path = format!("/k{k}?delay_ms=20&cc=max-age%3D60");
                for _ in 0..5 {
                    let r = conn.request("GET", &path, &[]).await.unwrap();
                    assert_eq!(r.status, 200);
                }
                let _ = w;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut dup = 0;
    for k in 0..keys {
        let path = format!("/k{k}?delay_ms=20&cc=max-age%3D60");
        if origin.hits(&path) > 1 {
            dup += 1;
            eprintln!("{path}: {}", origin.hits(&path));
        }
    }
    eprintln!("DUP {dup}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
