//! Loopback ports for the cluster tests.

/// `n` distinct free loopback addresses with ports below the kernel's ephemeral range (the
/// range outgoing connections take their source ports from), so that no connection of the
/// nodes started next can occupy one before its node binds it.
pub fn free_addrs(n: usize) -> Vec<std::net::SocketAddr> {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut out: Vec<std::net::SocketAddr> = Vec::new();
    let mut x = seed | 1;
    while out.len() < n {
        // xorshift: a port in 20000..32000.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if out.contains(&addr) {
            continue;
        }
        if std::net::TcpListener::bind(addr).is_ok() {
            out.push(addr);
        }
    }
    out
}
