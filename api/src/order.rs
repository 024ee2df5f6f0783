//! Allocation orders: a block of `2^order` contiguous frames.
//!
//! An [`Order`] is checked when it is made: it can never exceed
//! [`Order::LIMIT`], so shifting by it never overflows. Each allocator also
//! has its own configured maximum (Linux's `MAX_PAGE_ORDER`, 10 by default)
//! and refuses larger orders with an error.

use crate::{Error, PAGE_SHIFT};
use core::fmt;

/// Linux's default largest order: blocks of up to 1024 pages (4 MiB).
pub const MAX_PAGE_ORDER: Order = Order(10);
/// Number of orders a default free area has (`0..=MAX_PAGE_ORDER`).
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER.as_usize() + 1;
/// Orders above this are "costly": not retried without `__GFP_RETRY_MAYFAIL`.
pub const PAGE_ALLOC_COSTLY_ORDER: Order = Order(3);

/// The order of a block of `2^order` pages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Order(u8);

impl Order {
    /// The largest order any kmm allocator can be configured for (2^20 pages,
    /// 4 GiB): keeps `pages()` and byte sizes inside 32 bits of pages.
    pub const LIMIT: u32 = 20;

    /// Makes an order, or returns [`Error::OrderTooLarge`] above [`Order::LIMIT`].
    pub const fn new(order: u32) -> Result<Self, Error> {
        if order > Self::LIMIT {
            Err(Error::OrderTooLarge {
                order,
                max: Self::LIMIT,
            })
        } else {
            Ok(Self(order as u8))
        }
    }

    /// Order 0: one page.
    pub const ZERO: Order = Order(0);

    /// The order as an integer.
    pub const fn as_u32(self) -> u32 {
        self.0 as u32
    }
    /// The order as an index into per-order arrays.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
    /// Pages in a block of this order.
    pub const fn pages(self) -> usize {
        1 << self.0
    }
    /// Bytes in a block of this order.
    pub const fn bytes(self) -> usize {
        1 << (self.0 as u32 + PAGE_SHIFT)
    }
    /// The next smaller order, `None` at order 0.
    pub const fn lower(self) -> Option<Order> {
        match self.0 {
            0 => None,
            n => Some(Order(n - 1)),
        }
    }
    /// The next larger order, `None` at [`Order::LIMIT`].
    pub const fn higher(self) -> Option<Order> {
        if self.0 as u32 >= Self::LIMIT {
            None
        } else {
            Some(Order(self.0 + 1))
        }
    }
    /// Orders `0..=self`, ascending.
    pub fn up_to(self) -> impl DoubleEndedIterator<Item = Order> {
        (0..=self.0).map(Order)
    }
}

/// Linux's `get_order(size)`: the smallest order whose block holds `bytes`
/// (order 0 for 0 bytes). Errors above [`Order::LIMIT`].
///
/// ```
/// use kmm_api::{get_order, Order};
/// assert_eq!(get_order(1).unwrap(), Order::ZERO);
/// assert_eq!(get_order(4096).unwrap(), Order::ZERO);
/// assert_eq!(get_order(4097).unwrap().as_u32(), 1);
/// assert_eq!(get_order(3 << 20).unwrap().as_u32(), 10);
/// ```
pub const fn get_order(bytes: usize) -> Result<Order, Error> {
    let pages = match bytes.checked_add((1 << PAGE_SHIFT) - 1) {
        Some(b) => b >> PAGE_SHIFT,
        None => return Err(Error::SizeTooLarge { bytes }),
    };
    if pages <= 1 {
        return Ok(Order::ZERO);
    }
    let order = usize::BITS - (pages - 1).leading_zeros();
    match Order::new(order) {
        Ok(o) => Ok(o),
        Err(_) => Err(Error::SizeTooLarge { bytes }),
    }
}

impl TryFrom<u32> for Order {
    type Error = Error;
    fn try_from(order: u32) -> Result<Self, Error> {
        Order::new(order)
    }
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Order({})", self.0)
    }
}
impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "order {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_above_limit_is_an_error_not_a_panic() {
        assert!(matches!(
            Order::new(Order::LIMIT + 1),
            Err(Error::OrderTooLarge { .. })
        ));
        assert_eq!(Order::new(10).unwrap(), MAX_PAGE_ORDER);
        assert_eq!(MAX_PAGE_ORDER.pages(), 1024);
        assert_eq!(MAX_PAGE_ORDER.bytes(), 4 << 20);
    }

    #[test]
    fn get_order_is_the_smallest_fitting_order() {
        assert_eq!(get_order(0).unwrap(), Order::ZERO);
        assert_eq!(get_order(8192).unwrap().as_u32(), 1);
        assert_eq!(get_order(8193).unwrap().as_u32(), 2);
        assert!(get_order(usize::MAX).is_err());
    }
}
