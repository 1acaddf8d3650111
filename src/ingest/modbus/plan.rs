//! A device's registers → its poll plan: registers that share a poll
//! interval form a group, polled together and delivered as one reading;
//! within a group, registers of one function whose addresses touch or
//! overlap are read in one request. Pure; unit-tested.
//!
//! Invariants:
//! - every register of the device is in exactly one group and one request;
//! - a request never spans more than the protocol allows in one read (125
//!   registers, 2000 bits), and never covers an address no register asked
//!   for (a gap could be an address the device refuses with an exception,
//!   which would cost the neighbours their values);
//! - groups are ordered by interval and requests by function and address,
//!   so the same configuration always gives the same plan.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ModbusDevice, ModbusFunction as Function};

/// Registers per read request (function 3 and 4), from the Modbus spec.
pub const MAX_WORDS: u16 = 125;
/// Bits per read request (function 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// Registers polled at one interval: one reading per poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub every: Duration,
    pub requests: Vec<Request>,
}

/// One read on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub function: Function,
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// The registers this request answers.
    pub fields: Vec<Field>,
}

/// Where one register's value sits in a request's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// Index into the device's `registers`.
    pub register: usize,
    /// Words (or bits) from the request's first address.
    pub offset: u16,
}

/// The plan of one device.
pub fn device(d: &ModbusDevice) -> Vec<Group> {
    let mut by_every: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
    for (i, r) in d.registers.iter().enumerate() {
        by_every.entry(r.every).or_default().push(i);
    }
    by_every
        .into_iter()
        .map(|(every, regs)| Group {
            every,
            requests: requests(d, regs),
        })
        .collect()
}

fn requests(d: &ModbusDevice, mut regs: Vec<usize>) -> Vec<Request> {
    regs.sort_by_key(|&i| {
        let r = &d.registers[i];
        (r.function, r.address, i)
    });
    let mut out: Vec<Request> = Vec::new();
    for i in regs {
        let r = &d.registers[i];
        let width = r.data_type.words();
        let (start, end) = (
            u32::from(r.address),
            u32::from(r.address) + u32::from(width),
        );
        let limit = u32::from(if r.function.is_bit() {
            MAX_BITS
        } else {
            MAX_WORDS
        });
        if let Some(last) = out.last_mut() {
            let last_end = u32::from(last.address) + u32::from(last.count);
            let new_end = end.max(last_end);
            if last.function == r.function
                && start <= last_end
                && new_end - u32::from(last.address) <= limit
            {
                last.count = (new_end - u32::from(last.address)) as u16;
                last.fields.push(Field {
                    register: i,
                    offset: (start - u32::from(last.address)) as u16,
                });
                continue;
            }
        }
        out.push(Request {
            function: r.function,
            address: r.address,
            count: width,
            fields: vec![Field {
                register: i,
                offset: 0,
            }],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, ModbusRegister, Order};

    fn reg(
        name: &str,
        function: Function,
        address: u16,
        ty: DataType,
        every: u64,
    ) -> ModbusRegister {
        ModbusRegister {
            name: name.into(),
            function,
            address,
            data_type: ty,
            word_order: Order::Big,
            byte_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            every: Duration::from_secs(every),
        }
    }

    fn dev(registers: Vec<ModbusRegister>) -> ModbusDevice {
        ModbusDevice {
            unit: 1,
            name: "m".into(),
            bucket_id: "b".into(),
            data_source_id: "s".into(),
            every: Duration::from_secs(10),
            registers,
        }
    }

    /// (function, address, count, [(register, offset)]) of one request.
    type Shape = (Function, u16, u16, Vec<(usize, u16)>);

    fn shape(g: &Group) -> Vec<Shape> {
        g.requests
            .iter()
            .map(|r| {
                (
                    r.function,
                    r.address,
                    r.count,
                    r.fields.iter().map(|f| (f.register, f.offset)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn contiguous_registers_share_a_request_and_gaps_split() {
        use DataType::*;
        use Function::*;
        let d = dev(vec![
            reg("c", Holding, 4, F32, 10), // 4..6
            reg("a", Holding, 0, U16, 10), // 0
            reg("b", Holding, 1, U32, 10), // 1..3, touches c at 4? no: ends at 3
            reg("x", Holding, 3, U16, 10), // 3: fills the gap to c
            reg("far", Holding, 100, I16, 10),
            reg("i", Input, 0, U16, 10),
            reg("k", Coil, 0, Bool, 10),
            reg("k2", Coil, 1, Bool, 10),
        ]);
        let plan = device(&d);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            shape(&plan[0]),
            vec![
                (Holding, 0, 6, vec![(1, 0), (2, 1), (3, 3), (0, 4)]),
                (Holding, 100, 1, vec![(4, 0)]),
                (Input, 0, 1, vec![(5, 0)]),
                (Coil, 0, 2, vec![(6, 0), (7, 1)]),
            ]
        );
    }

    #[test]
    fn groups_by_interval() {
        use DataType::*;
        use Function::*;
        let d = dev(vec![
            reg("slow", Holding, 0, U16, 60),
            reg("fast", Holding, 1, U16, 1),
            reg("fast2", Holding, 2, U16, 1),
        ]);
        let plan = device(&d);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].every, Duration::from_secs(1));
        assert_eq!(shape(&plan[0]), vec![(Holding, 1, 2, vec![(1, 0), (2, 1)])]);
        assert_eq!(shape(&plan[1]), vec![(Holding, 0, 1, vec![(0, 0)])]);
    }

    #[test]
    fn overlapping_registers_read_once() {
        use DataType::*;
        use Function::*;
        let d = dev(vec![
            reg("as_u32", Holding, 10, U32, 10),
            reg("low", Holding, 11, U16, 10),
        ]);
        assert_eq!(
            shape(&device(&d)[0]),
            vec![(Holding, 10, 2, vec![(0, 0), (1, 1)])]
        );
    }

    #[test]
    fn a_request_stays_within_the_protocol_limit() {
        use DataType::*;
        use Function::*;
        let regs: Vec<_> = (0..130)
            .map(|a| reg(&format!("r{a}"), Holding, a, U16, 10))
            .collect();
        let plan = device(&dev(regs));
        let counts: Vec<u16> = plan[0].requests.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 5]);
        let total: usize = plan[0].requests.iter().map(|r| r.fields.len()).sum();
        assert_eq!(total, 130);
        let bits: Vec<_> = (0..2001)
            .map(|a| reg(&format!("k{a}"), Coil, a, Bool, 10))
            .collect();
        let counts: Vec<u16> = device(&dev(bits))[0]
            .requests
            .iter()
            .map(|r| r.count)
            .collect();
        assert_eq!(counts, vec![2000, 1]);
    }

    /// The top of the address space: a 4-word value at 65532 fits.
    #[test]
    fn the_last_addresses() {
        use DataType::*;
        use Function::*;
        let d = dev(vec![reg("top", Input, 65532, F64, 10)]);
        assert_eq!(shape(&device(&d)[0]), vec![(Input, 65532, 4, vec![(0, 0)])]);
    }
}
