//! A loopback TCP proxy to the MySQL server that cuts every connection (both ways, at
//! once) after the client has sent `cut_after` bytes: a network that drops mid-export.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct CuttingProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttingProxy {
    pub fn start(upstream: String, cut_after: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (c, all) = (cut.clone(), streams.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if c.load(Ordering::SeqCst) {
                    // Cut: later connections are refused.
                    let _ = client.shutdown(Shutdown::Both);
                    break;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    break;
                };
                if let Ok(mut held) = all.lock() {
                    for s in [&client, &server] {
                        if let Ok(clone) = s.try_clone() {
                            held.push(clone);
                        }
                    }
                }
                let pump = |mut from: TcpStream, mut to: TcpStream, count: bool| {
                    let (c, n, all) = (c.clone(), sent.clone(), all.clone());
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(read) = from.read(&mut buf) {
                            if read == 0 || c.load(Ordering::SeqCst) {
                                break;
                            }
                            if count && n.fetch_add(read as u64, Ordering::SeqCst) >= cut_after {
                                c.store(true, Ordering::SeqCst);
                                cut_all(&all);
                                break;
                            }
                            if to.write_all(&buf[..read]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    break;
                };
                pump(client, s2, true);
                pump(server, c2, false);
            }
        });
        Ok(CuttingProxy { port, cut, streams })
    }

    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

fn cut_all(streams: &Mutex<Vec<TcpStream>>) {
    if let Ok(held) = streams.lock() {
        for s in held.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.cut.store(true, Ordering::SeqCst);
        cut_all(&self.streams);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
