//! Assembly text <-> binary round trips on a program that uses every instruction.

use lpusim::isa::{encode, text};

const EVERY: &str = "
; every instruction at least once
.queue MEM.W3
    NOP 4
    READ 0x10, W2
    REPEAT 7, 1
    WRITE 5, E1
    REPEAT 3, 2, -1
    GATHER E0, W4
    SCATTER W1, E6
    SYNC
    NOTIFY
    IFETCH
    CONFIG 0xfffff
    DESKEW
.queue VXM.0
    ADD.f32 -, E0, #1.5
    SUB.i32 W4, R3, #-7
    MUL.f32 E8, E0, R0
    MAX.f32 E0, E4, #-0.0
    MIN.i32 E0, E4, #0x7fffffff
    DIV.f32 E0, E4, #3
    RELU.f32 E0, E4
    NEG.i32 E0, E4
    ABS.f32 E0, E4
    COPY.i32 E0, #12
    EXP.f32 E0, E4
    TANH.f32 E0, E4
    RSQRT.f32 E0, E4
    RCP.f32 E0, E4
    SIGMOID.f32 E0, E4
    ERF.f32 E0, #0.1
    CVT.f32.f16 E0, E4
    CVT.f16.f32 -, W0
    CVT.i8.i32 E0, #-128
    CVT.u8.f32 E0, #255
    CVT.i32.i8 E0, R2
    CVT.f16.f16 E0, #65504
    LOG.f32 E0, E4
    SQRT.f32 -, #-0.0
    EQ.f32 E0, E4, #nan
    NE.i32 E0, R1, #-1
    LT.f32 E0, E4, R2
    LE.i32 E0, E4, #0
    GT.f32 E0, #inf, E4
    GE.i32 -, E4, E8
    AND.i32 E0, E4, #0x7fffffff
    OR.i32 E0, R0, R1
    XOR.i32 E0, E4, #-1
    NOT.i32 E0, R3
    FLOOR.f32 E0, E4
    CEIL.f32 W0, #-0.5
.queue MXM.W0.LW
    LW.i8 W0, 32
    LW.f16 W0, 16
.queue MXM.W0.IW
    IW
.queue MXM.E1.ABC
    ABC.u8 E0, 5
    ABC.f16 E2, 1023, +
    REPEAT 3, 4, 2
.queue MXM.E1.ACC
    ACC.i32 5, W0
    ACC.f32 1023, W4
.queue SXM.W.0
    SHIFT E0, E1, -319
    PERMUTE E0, E1, E2
    DISTRIBUTE E0, E1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 255
    TRANSPOSE E16, E0
.queue C2C.0
    SEND E0
    RECV W3
.init MEM.W3 0x10 f32 1.0 2.0 3.5 nan -inf
.init MEM.E0 0 u8 fill 7
.init MEM.E1 3 f16 0.1 -2
.init MEM.E2 3 i8 -1 0x80
.dump MEM.E0 0 f32 2
.link 0 8 217
";

#[test]
fn text_binary_text_is_a_fixed_point() {
    let canon = text::canonicalize(EVERY).unwrap();
    assert_eq!(text::canonicalize(&canon).unwrap(), canon);
    let bin = lpusim::assemble(EVERY).unwrap();
    let back = lpusim::disassemble(&bin).unwrap();
    assert_eq!(back, canon);
    assert_eq!(lpusim::assemble(&back).unwrap(), bin);
    let p = text::parse(EVERY).unwrap();
    assert_eq!(encode::decode_program(&encode::encode_program(&p)).unwrap(), p);
    // Every instruction word decodes to itself.
    for q in &p.queues {
        for i in &q.instrs {
            assert_eq!(encode::decode_instr(encode::encode_instr(i)).unwrap(), *i);
        }
    }
    assert!(canon.contains("    CONFIG 1048575\n"));
    assert!(canon.contains("    REPEAT 3, 2, -1\n"));
    assert!(canon.contains("    CVT.f16.f16 E0, #65504.0\n"));
    assert!(canon.contains(".init MEM.W3 16 f32 1.0 2.0 3.5 nan -inf\n"));
    assert!(canon.contains(".init MEM.E2 3 i8 -1 -128\n"));
}

#[test]
fn corrupt_binaries_are_errors_not_panics() {
    let bin = lpusim::assemble(EVERY).unwrap();
    assert!(lpusim::disassemble(&bin[..bin.len() - 1]).is_err());
    assert!(lpusim::disassemble(b"LPUSIM\0\x09").is_err());
    assert!(lpusim::disassemble(b"garbage").is_err());
    // Flip every byte in turn: decoding must never panic.
    for k in 0..bin.len() {
        let mut b = bin.clone();
        b[k] ^= 0xa5;
        let _ = lpusim::disassemble(&b);
    }
}
