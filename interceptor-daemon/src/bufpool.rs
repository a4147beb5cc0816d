//! Per-thread free lists of I/O buffers, so that an idle connection holds no
//! buffer and a busy one does not allocate per read.
//!
//! A node carries many mostly idle pooled connections (application pools keep
//! them open for hours). Fixed per-connection buffers would cost more than
//! everything else about them, so the relays wait for their socket to become
//! readable with no buffer, take one from here, and give it back once the bytes
//! read are handled and written (`interceptor-lab idle` measures the effect).
//!
//! A buffer may come back on another thread than the one it was taken on (the
//! task moved): it joins that thread's list.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers of each kind kept per thread; more are freed.
const KEEP: usize = 64;
/// A returned buffer larger than this is freed rather than kept: one huge
/// message should not pin its buffer for the life of the thread.
const MAX_KEPT: usize = 256 * 1024;

thread_local! {
    static BYTES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static VECS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// What the pools need of a buffer type.
trait Buffer: Default {
    fn clear(&mut self);
    fn capacity(&self) -> usize;
    fn reserve(&mut self, additional: usize);
}

impl Buffer for BytesMut {
    fn clear(&mut self) {
        BytesMut::clear(self)
    }
    fn capacity(&self) -> usize {
        BytesMut::capacity(self)
    }
    fn reserve(&mut self, additional: usize) {
        BytesMut::reserve(self, additional)
    }
}

impl Buffer for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self)
    }
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional)
    }
}

type Pool<T> = std::thread::LocalKey<RefCell<Vec<T>>>;

fn take<T: Buffer>(pool: &'static Pool<T>, size: usize) -> T {
    let mut b = pool.with(|f| f.borrow_mut().pop()).unwrap_or_default();
    // An emptied BytesMut that was advanced through gets its space back here
    // without allocating.
    b.reserve(size);
    b
}

fn give<T: Buffer>(pool: &'static Pool<T>, mut b: T) {
    b.clear();
    if b.capacity() == 0 || b.capacity() > MAX_KEPT {
        return;
    }
    pool.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(b);
        }
    });
}

/// An empty read buffer with room for at least `size` bytes.
pub fn bytes(size: usize) -> BytesMut {
    take(&BYTES, size)
}

/// Returns a read buffer; what it still holds is discarded.
pub fn give_bytes(b: BytesMut) {
    give(&BYTES, b)
}

/// An empty output buffer with room for at least `size` bytes.
pub fn vec(size: usize) -> Vec<u8> {
    take(&VECS, size)
}

/// Returns an output buffer; what it still holds is discarded.
pub fn give_vec(v: Vec<u8>) {
    give(&VECS, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_come_back_empty() {
        let mut b = bytes(1024);
        b.extend_from_slice(b"left over");
        let ptr = b.as_ptr();
        give_bytes(b);
        let b = bytes(1024);
        assert!(b.is_empty());
        assert!(b.capacity() >= 1024);
        assert_eq!(b.as_ptr(), ptr, "the returned buffer is handed out again");

        let mut v = vec(100);
        v.extend_from_slice(&[1; 50]);
        let ptr = v.as_ptr();
        give_vec(v);
        let v = vec(10);
        assert!(v.is_empty());
        assert_eq!(v.as_ptr(), ptr);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let kept = || BYTES.with(|f| f.borrow().len());
        let before = kept();
        give_bytes(bytes(MAX_KEPT + 1));
        assert_eq!(kept(), before);
        give_bytes(bytes(1024));
        assert_eq!(kept(), before + 1);
    }
}
