; A hand-written program: y = relu(x + b) on the VXM, for two vectors of f32.
; x lives in MEM.W0..W3 (byte planes) at addresses 0 and 1, b in MEM.E0..E3 at address 0.
; MEM.W<i> sits at position 46 - i and the VXM at 47; MEM.E<i> at 48 + i (docs/isa.md section 1).
.init MEM.W0 0 f32 1.0 -2.0 3.5 -0.25
.init MEM.W0 1 f32 -1.0 2.0 -3.5 0.25
.init MEM.E0 0 f32 0.5 0.5 0.5 0.5

; x: READ at t emits at t+1 and reaches the VXM (distance 1 + i) at t + 2 + i. Aim both operands at cycle 10.
.queue MEM.W0
    NOP 8
    READ 0, E0
    REPEAT 1, 1
.queue MEM.W1
    NOP 7
    READ 0, E1
    REPEAT 1, 1
.queue MEM.W2
    NOP 6
    READ 0, E2
    REPEAT 1, 1
.queue MEM.W3
    NOP 5
    READ 0, E3
    REPEAT 1, 1
; b, the same vector for both rows (stride 0), westward from MEM.E<i> (distance 1 + i).
.queue MEM.E0
    NOP 8
    READ 0, W0
    REPEAT 1, 1, 0
.queue MEM.E1
    NOP 7
    READ 0, W1
    REPEAT 1, 1, 0
.queue MEM.E2
    NOP 6
    READ 0, W2
    REPEAT 1, 1, 0
.queue MEM.E3
    NOP 5
    READ 0, W3
    REPEAT 1, 1, 0
; ALU 0 adds at 10 and 11 (results in R0 at 12 and 13); ALU 1 applies ReLU and emits westward at 14 and 15.
.queue VXM.0
    NOP 10
    ADD.f32 -, E0, W0
    REPEAT 1, 1
.queue VXM.1
    NOP 12
    RELU.f32 W4, R0
    REPEAT 1, 1
; The result (byte planes W4..W7) reaches MEM.W<4+b> (distance 5 + b) at 14 + 5 + b: write there, addresses 8, 9.
.queue MEM.W4
    NOP 19
    WRITE 8, W4
    REPEAT 1, 1
.queue MEM.W5
    NOP 20
    WRITE 8, W5
    REPEAT 1, 1
.queue MEM.W6
    NOP 21
    WRITE 8, W6
    REPEAT 1, 1
.queue MEM.W7
    NOP 22
    WRITE 8, W7
    REPEAT 1, 1
.dump MEM.W4 8 f32 2
